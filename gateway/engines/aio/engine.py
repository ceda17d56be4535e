"""The aio engine: grpc.aio's public API, one server for forwarded calls and the gateway's own.

The gateway in Python alone, on public grpcio (``engine = "aio"``): for a machine without the native
build, or to tell a native-engine problem from a policy one. More CPU per call than the native engine
(``make bench`` measures both); the same call lifecycle, the same replies.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from gateway.engines.aio.switchboard import HandlerTable, Switchboard
from gateway.engines.base import TICK_SECONDS, Retired
from gateway.ops.own_services import OwnServices
from gateway.plan import Plan
from runtime.serving import listen, stop


class AioEngine:
    """Build inside the running event loop."""

    def __init__(self, plan: Plan, own: OwnServices, reuse_port: bool) -> None:
        self.plan = plan
        self.port = 0
        self._own = own
        self._switchboard = Switchboard(HandlerTable(plan, plan.open_upstreams(), own))
        # Off unless asked (--workers): a second gateway could otherwise bind the port unnoticed.
        options = [("grpc.so_reuseport", int(reuse_port)), *plan.server_options]
        self._server = grpc.aio.server(interceptors=[self._switchboard], options=options)
        own.register(self._server)
        self._ticking: asyncio.Task[None] | None = None
        self._retired = Retired()

    async def start(self) -> None:
        self.port = listen(self._server, self.plan.config.listen, self.plan.server_credentials)
        await self._server.start()
        self._ticking = asyncio.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick()

    def swap(self, plan: Plan) -> None:
        previous = self._switchboard.table
        self._switchboard.table = HandlerTable(plan, plan.open_upstreams(), self._own)
        self.plan = plan
        self._retired.close_later(plan.config.shutdown_grace + 1, previous.close)

    def tick(self) -> None:
        """On the event loop, where this engine's decisions run too."""
        self.plan.tick()

    def settle(self) -> None:
        """Nothing waits: each call reaches the observers as it ends, on the event loop."""

    async def stop(self, grace: float) -> None:
        await stop(self._server, grace)
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
        await self._switchboard.table.close()
