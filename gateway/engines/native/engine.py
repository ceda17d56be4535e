"""The native engine: the gRPC door carried by the native data plane (Rust: tokio, hyper, rustls), every
call decided and observed in Python on the event loop's thread (``decider.py``).

The gateway's own health and reflection stay on a grpc.aio server on a private unix socket, which the
native side reaches as one more upstream ("local"), as every other call: decided by the same chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from gateway_native import Server

from gateway.config.schema import Route
from gateway.engines.base import TICK_SECONDS, Retired
from gateway.engines.native.decider import Decider
from gateway.ops.own_services import OwnServices
from gateway.plan import Plan
from gateway.routing.tls import server_pems, upstream_pems
from runtime.addresses import parse_host_port
from runtime.serving import cannot_listen, stop

if TYPE_CHECKING:  # type aliases of the module's stub only
    from gateway_native import Method, Retry, Upstream

# The upstream name of the gateway's own services (health, reflection) in the native plan.
LOCAL = "local"
# How long a connection may stay open without a call, and may take to send its first headers.
IDLE_SECONDS = 300.0
HEADER_SECONDS = 10.0
# Streams one client connection may have open at once.
MAX_STREAMS = 1000
# How long a metrics scrape waits for the ends of calls the data plane has not handed over yet.
SETTLE_SECONDS = 1.0


def _retried(routes: Sequence[Route]) -> dict[str, Retry]:
    """The retry policy of each method a route lists as safe to send twice (as grpc core's would be)."""
    policies: dict[str, Retry] = {}
    for route in routes:
        policy = route.retry
        if policy is None:
            continue
        retry = (policy.max_attempts, policy.initial_backoff, policy.max_backoff, policy.backoff_multiplier)
        for name in policy.methods:
            policies[f"/{route.service}/{name}"] = retry
    return policies


class NativeEngine:
    """Build inside the running event loop."""

    def __init__(self, plan: Plan, own: OwnServices, reuse_port: bool) -> None:
        self.plan = plan
        self.port = 0
        config = plan.config
        self._local = grpc.aio.server()
        own.register(self._local)
        # A folder of this process's own (mode 0700): no other user can reach the socket.
        self._folder = tempfile.mkdtemp(prefix="grpc-gateway-")
        self._local_target = f"unix:{self._folder}/local.sock"
        host, port = parse_host_port(config.listen)
        self._server = Server(
            host,
            port,
            reuse_port=reuse_port,
            io_threads=1,
            tls=server_pems(config.tls),
            max_concurrent_streams=MAX_STREAMS,
            max_message_bytes=config.limits.max_message_bytes,
            max_metadata_bytes=config.limits.max_metadata_bytes,
            idle_timeout=IDLE_SECONDS,
            header_timeout=HEADER_SECONDS,
        )
        self._decider: Decider | None = None
        self._ticking: asyncio.Task[None] | None = None
        self._retired = Retired()

    def _set_plan(self, plan: Plan) -> None:
        config = plan.config
        chain = plan.chain
        retried = _retried(config.routes)
        methods: dict[str, Method] = {
            path: (
                route.upstream,
                route.service,
                route.client_streaming,
                route.server_streaming,
                chain.methods[path].reads_request,
                route.default_timeout,
                None if route.kind != "unary_unary" else retried.get(path),
            )
            for path, route in plan.routes.methods.items()
        }
        for path, own in plan.own.items():
            streams = (own.client_streaming, own.server_streaming)
            methods[path] = (LOCAL, own.service, *streams, False, None, None)
        upstreams: dict[str, Upstream] = {LOCAL: ([self._local_target], None)}
        for index, route in enumerate(config.routes):
            tls = None if route.tls is None else upstream_pems(route.tls, f"routes[{index}].tls")
            upstreams[route.upstream] = (list(route.upstreams), tls)
        keepalive = config.upstream_keepalive
        reconnect = config.upstream_reconnect
        self._server.set_plan(
            methods,
            upstreams,
            (keepalive.time, keepalive.timeout, keepalive.without_calls),
            (reconnect.initial, reconnect.max),
        )

    async def start(self) -> None:
        self._local.add_insecure_port(self._local_target)
        await self._local.start()
        try:
            self.port = self._server.start()
        except OSError as error:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise cannot_listen(self.plan.config.listen) from error
        self._set_plan(self.plan)
        self._decider = Decider(self._server, self.plan.chain)
        self._decider.start()
        self._ticking = asyncio.create_task(self._tick_forever())

    def swap(self, plan: Plan) -> None:
        if self._decider is None:
            raise RuntimeError("NativeEngine.start() comes before swap()")
        self._decider.chain = plan.chain
        self._set_plan(plan)
        self.plan = plan

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick()

    def tick(self) -> None:
        """On the event loop, where this engine's decisions run too: the ends of calls that wait
        for a wake-up (see decider.py) are observed first, then the plan's periodic jobs run."""
        if self._decider is not None:
            self._decider.take()
        self.plan.tick()

    def settle(self) -> None:
        self._server.settle(SETTLE_SECONDS)

    async def stop(self, grace: float) -> None:
        self._server.drain()
        # The server waits for calls in flight on a thread of its own; their ends, and any decision
        # still to make, are taken on this loop meanwhile.
        await asyncio.to_thread(self._server.stop, grace)
        if self._decider is not None:
            await self._decider.stopped
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
        await stop(self._local, 0)
        shutil.rmtree(self._folder, ignore_errors=True)
