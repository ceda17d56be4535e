"""The core engine: forwarding on grpcio's core layer (``grpc._cython.cygrpc``), no asyncio per call.

grpc.aio spends most of a forwarded call's CPU on its own machinery: a task, a servicer context,
a separate batch for each operation, and a hop through the event loop for each completion. Here
one thread polls the listener's completion queue and one each upstream channel's; a unary call
is read with one batch, forwarded upstream as one batch and answered as one batch. Each call runs
its method's chain like any door's (gateway/call/chain.py): inline on the listener's thread, or on
the event loop when a step waits (a Redis store). The asyncio loop also runs health and
reflection (a grpc.aio server on a private socket, reached through the same forwarding), health
checks, metrics and reloads.

``cygrpc`` is private to grpcio, so grpcio is pinned to the minor release this is tested on
(pyproject.toml), and ``engine = "aio"`` in the config selects the public-API engine instead.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import grpc

from gateway.engines.base import Retired
from gateway.engines.core.carrying import Carrying, Method
from gateway.engines.core.channel import UpstreamChannel, open_channels
from gateway.engines.core.listener import CoreListener
from gateway.ops.own_services import OwnServices
from gateway.plan import Plan
from runtime.serving import BindError


class CoreEngine:
    """The listener on the plan's address, and a grpc.aio server for the gateway's own services."""

    def __init__(self, plan: Plan, own: OwnServices, reuse_port: bool) -> None:
        self.plan = plan
        self.port = 0
        # Off unless asked (--workers): a second gateway could otherwise bind the port unnoticed.
        self._options = [("grpc.so_reuseport", int(reuse_port)), *plan.server_options]
        self._local = grpc.aio.server()
        own.register(self._local)
        # A folder of this process's own (mode 0700): no other user can reach the socket.
        self._folder = tempfile.mkdtemp(prefix="grpc-gateway-")
        self._local_target = f"unix:{self._folder}/local.sock"
        self._listener: CoreListener | None = None
        self._retired = Retired()

    def _carrying(self, plan: Plan) -> Carrying:
        config = plan.config
        channels = open_channels(
            config.routes, config.upstream_keepalive, config.upstream_reconnect, plan.upstream_transports
        )
        local = UpstreamChannel("local", self._local_target, ())
        chain = plan.chain
        methods = {
            path: Method(
                path.encode(),
                channels[route.upstream],
                route,
                route.client_streaming,
                route.server_streaming,
                chain.methods[path],
            )
            for path, route in plan.routes.methods.items()
        }
        for path, own in plan.own.items():
            methods[path] = Method(
                path.encode(), local, None, own.client_streaming, own.server_streaming, chain.methods[path]
            )
        return Carrying(methods, chain, asyncio.get_running_loop(), (*channels.values(), local))

    async def start(self) -> None:
        try:
            self._listener = CoreListener(
                self._carrying(self.plan),
                self.tick,
                self.plan.config.listen,
                self.plan.server_credentials,
                self._options,
            )
        except BindError:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self._local.add_insecure_port(self._local_target)
        await self._local.start()
        self.port = self._listener.port
        self._listener.start()

    @property
    def listener(self) -> CoreListener:
        if self._listener is None:
            raise RuntimeError("CoreEngine.start() comes first")
        return self._listener

    def swap(self, plan: Plan) -> None:
        if self._listener is None:
            raise RuntimeError("CoreEngine.start() comes before swap()")
        previous, self._listener.carrying = self._listener.carrying, self._carrying(plan)
        self.plan = plan
        self._retired.close_later(plan.config.shutdown_grace + 1, previous.close)

    def tick(self) -> None:
        """On the listener's thread, where memory-storage decisions run too."""
        self.plan.tick()

    async def stop(self, grace: float) -> None:
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop, grace)
            self._listener.carrying.close()
        await self._local.stop(0)
        shutil.rmtree(self._folder, ignore_errors=True)
