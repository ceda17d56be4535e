"""The HTTP/JSON door's listener: uvicorn (httptools, on the gateway's own event loop), in-process.

The socket is the gateway's own, so that ``--workers`` can share the port (SO_REUSEPORT) and a
bind failure is the same clear error as the gRPC door's; TLS comes from the same ``[tls]`` files.
Its connections are uvicorn's with a header timer and a cap on their number (connections.py).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl

import uvicorn

from gateway.config.schema import Http, ServerTls
from gateway.doors.http.connections import Shedding, max_connections, protocol_class
from gateway.doors.http.cors import Cors, CorsPolicy
from gateway.doors.http.door import DoorPlan, HttpDoor, Probes
from gateway.doors.http.grpcweb import GrpcWebDoor
from gateway.doors.http.openapi import openapi_document
from gateway.plan import Plan
from runtime.addresses import parse_host_port
from runtime.serving import BindError


def door_plan(plan: Plan) -> DoorPlan:
    """The door's view of ``plan``; opens channels to the upstreams (inside the running loop)."""
    config = plan.config
    proto_names = config.http.json_names == "proto"
    document = openapi_document(plan.http_routes, plan.routes.catalog, proto_names)
    return DoorPlan(
        routes=plan.http_routes,
        chain=plan.chain,
        upstreams=plan.open_upstreams(),
        blocking=lambda: plan.open_upstreams(blocking=True),
        pool=plan.routes.catalog.pool,
        proto_names=proto_names,
        default_timeout=config.http.default_timeout,
        max_body_bytes=config.limits.max_message_bytes,
        max_header_bytes=config.limits.max_metadata_bytes,
        openapi=json.dumps(document).encode(),
    )


def _socket(address: str, reuse_port: bool) -> socket.socket:
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise BindError(f"cannot listen on {address} (http.listen): {error.strerror}") from None
    sock.setblocking(False)
    return sock


class HttpListener:
    """Serves the door on ``address`` until stopped; ``swap`` takes a new plan.

    ``probes`` answers ``GET /healthz`` and ``/readyz`` (see gateway/app.py).
    """

    def __init__(self, plan: Plan, reuse_port: bool, probes: Probes | None = None) -> None:
        config = plan.config
        address = config.http.listen
        if address is None:
            raise RuntimeError("HttpListener needs [http] listen")
        self.door = HttpDoor(door_plan(plan), probes)
        # CORS in front of everything; gRPC-Web calls taken before the JSON routes.
        self._app = Cors(GrpcWebDoor(self.door), CorsPolicy.of(config.http.cors))
        self._socket = _socket(address, reuse_port)
        self.port: int = self._socket.getsockname()[1]
        self._shedding = Shedding(config.http.header_timeout, max_connections(config.http.max_connections))
        self._server = uvicorn.Server(self._config(config.tls, config.shutdown_grace, config.http))

    def _config(self, tls: ServerTls | None, grace: float, http: Http) -> uvicorn.Config:
        options: dict[str, object] = {}
        if tls is not None:
            options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
            if tls.client_ca is not None:
                options.update(ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            self._app,
            http=protocol_class(self._shedding),  # httptools, with the header timer and the cap
            loop="none",  # the gateway's loop (uvloop) is already running
            lifespan="off",
            ws="none",
            interface="asgi3",
            log_config=None,
            access_log=False,  # the gateway's own access log has every call
            server_header=False,
            date_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=int(grace) + 1,
            timeout_keep_alive=http.idle_timeout,  # type: ignore[arg-type]  # a float works: call_later's
            **options,  # type: ignore[arg-type]
        )
        config.load()
        return config

    async def start(self) -> None:
        server = self._server
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[self._socket])

    def swap(self, plan: Plan) -> DoorPlan:
        """Serve new requests by ``plan``; the previous door plan is returned, to close later."""
        previous, self.door.plan = self.door.plan, door_plan(plan)
        http = plan.config.http
        self._app.policy = CorsPolicy.of(http.cors)
        # Taken by each connection's next timer and by new connections; running timers keep theirs.
        self._shedding.limit(http.header_timeout, max_connections(http.max_connections))
        self._server.config.timeout_keep_alive = http.idle_timeout  # type: ignore[assignment]
        return previous

    async def stop(self) -> None:
        """Take no new connections; let requests in flight end within the grace period."""
        with contextlib.suppress(RuntimeError):
            await self._server.shutdown(sockets=[self._socket])
        await self.door.plan.close()
