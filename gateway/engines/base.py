"""The engine protocol: what carries the calls of the gRPC door, as the gateway's app sees it.

An engine owns its threads and loops: it takes calls off its listener, runs each one's method
chain (inline, or on the event loop when a step waits), forwards admitted calls upstream and
answers refused ones. It also runs the plan's periodic jobs (``Plan.tick``) on the thread its
decisions run on. Nothing outside ``gateway/engines/`` knows which engine runs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Protocol

from gateway.ops.own_services import OwnServices
from gateway.plan import Plan

# How often an engine runs the plan's periodic jobs.
TICK_SECONDS = 0.25


class Retired:
    """What an earlier plan opened (upstream channels), closed once its calls have had time to end."""

    def __init__(self) -> None:
        self._closing: set[asyncio.Future[None]] = set()

    def close_later(self, seconds: float, close: Callable[[], object]) -> None:
        """Call ``close`` (and await what it returns, if anything) ``seconds`` from now."""

        async def closed() -> None:
            await asyncio.sleep(seconds)
            result = close()
            if inspect.isawaitable(result):
                await result

        closing = asyncio.ensure_future(closed())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)


class Engine(Protocol):
    """Built with the first plan, the gateway's own services and whether to share the port
    (``--workers``), inside the running event loop."""

    port: int  # the port it listens on, once started

    def __init__(self, plan: Plan, own: OwnServices, reuse_port: bool) -> None: ...

    async def start(self) -> None:
        """Listen and serve. Raises BindError when the address cannot be listened on."""

    def swap(self, plan: Plan) -> None:
        """Serve new calls by ``plan``; calls in flight finish by theirs. Old channels close later."""

    def tick(self) -> None:
        """Run the current plan's periodic jobs; the engine calls it every TICK_SECONDS itself."""

    def settle(self) -> None:
        """Any thread but the event loop's: return once the calls that ended before it have
        reached the observers, waiting a moment at most (a data plane that reports ends in batches
        delivers them now)."""

    async def stop(self, grace: float) -> None:
        """Take no new calls; let in-flight ones finish within ``grace`` seconds, then cancel them."""
