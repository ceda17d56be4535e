"""CORS on the HTTP door: web pages of the origins ``[http.cors] allow_origins`` lets in may call it.

An ASGI layer in front of the door (gRPC-Web and JSON alike). A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) from an allowed origin is answered here, before any chain runs,
so it needs no key; every other request from an allowed origin goes on, and its reply gets
``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers`` (the gRPC status, the rate-limit
headers and the request id, which a page could not read otherwise). A request from any other origin
gets no CORS header at all (so the browser keeps the reply from the page); its preflight is 403.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config.schema import Cors as CorsConfig

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# What gRPC-Web clients and the gateway's own auth send: always allowed.
ALWAYS_ALLOWED_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-api-key",
    "authorization",
    "x-request-id",
)
EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "x-request-id",
)
# The door's verbs (HTTP rules and gRPC-Web's POST).
ALLOWED_METHODS = "GET, POST, PUT, DELETE, PATCH"


def _compiled(pattern: str) -> str:
    """An origin pattern of the config (checked there) as a regular expression."""
    if pattern == "*":
        return ".*"
    scheme, _, rest = pattern.partition("://")
    host, port = rest, ""
    if not rest.endswith("]") and ":" in rest.rpartition("]")[2]:
        host, _, port = rest.rpartition(":")
    subdomains = host.startswith("*.")
    text = re.escape(f"{scheme}://") + (
        "[a-z0-9.-]+" + re.escape(host[1:]) if subdomains else re.escape(host)
    )
    if port == "*":
        return text + "(:[0-9]{1,5})?"
    return text + (re.escape(f":{port}") if port else "")


class CorsPolicy:
    """One configuration's CORS answers, made once."""

    def __init__(self, config: CorsConfig) -> None:
        self._origins = re.compile("|".join(f"(?:{_compiled(pattern)})" for pattern in config.allow_origins))
        headers = dict.fromkeys((*ALWAYS_ALLOWED_HEADERS, *config.allow_headers))
        self._preflight = [
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-allow-headers", ", ".join(headers).encode()),
            (b"access-control-max-age", str(config.max_age).encode()),
            (b"vary", b"origin, access-control-request-method, access-control-request-headers"),
        ]
        self._exposed = [
            (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
            (b"vary", b"origin"),
        ]

    @staticmethod
    def of(config: CorsConfig) -> CorsPolicy | None:
        """The policy of ``config``; None when it lets no origin in (CORS off)."""
        return CorsPolicy(config) if config.allow_origins else None

    def allows(self, origin: bytes) -> bool:
        return self._origins.fullmatch(origin.decode("latin-1")) is not None

    def preflight_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin), *self._preflight]

    def reply_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin), *self._exposed]


class Cors:
    """The ASGI layer; ``policy`` (None: CORS off) is swapped whole on a reload."""

    def __init__(self, app: App, policy: CorsPolicy | None) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policy
        if policy is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = scope["method"] == "OPTIONS"
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = policy.allows(origin)
        if preflight:
            await _answer_preflight(send, policy.preflight_headers(origin) if allowed else None, origin)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        extra = policy.reply_headers(origin)

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _answer_preflight(send: Send, headers: list[tuple[bytes, bytes]] | None, origin: bytes) -> None:
    if headers is None:
        body = f"origin {origin[:200].decode('latin-1')} is not in [http.cors] allow_origins\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
