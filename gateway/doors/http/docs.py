"""``GET /docs``: an interactive page over ``/openapi.json``, Swagger UI's assets from the
``swagger-ui-py`` package (no CDN: the page works where the gateway's machine has no internet)."""

from __future__ import annotations

from functools import cache
from importlib import resources

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>shop gRPC gateway: HTTP/JSON API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""

# A script of its own rather than inline, so that a strict Content-Security-Policy allows the page.
START = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
});
"""

# Path -> (content type, file in swagger-ui-py's static folder, or None for our own bytes).
_ASSETS = {
    "/docs": ("text/html; charset=utf-8", None),
    "/docs/start.js": ("text/javascript", None),
    "/docs/swagger-ui.css": ("text/css", "swagger-ui.css"),
    "/docs/swagger-ui-bundle.js": ("text/javascript", "swagger-ui-bundle.js"),
}


def is_docs(path: str) -> bool:
    return path in _ASSETS


@cache
def asset(path: str) -> tuple[bytes, bytes]:
    """(content type, body) of a docs path; read once, on first use."""
    content_type, name = _ASSETS[path]
    if name is None:
        body = PAGE if path == "/docs" else START
    else:
        body = resources.files("swagger_ui").joinpath("static", name).read_bytes()
    return content_type.encode(), body
