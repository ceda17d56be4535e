"""The native engine's decider: the one Python thread where every call of the native door is decided
and observed.

The native data plane (Rust, ``gateway_native``) carries the bytes on its own I/O threads, which never
take the GIL. It queues each call's facts (an ``Arrival``) and each call's end (an ``Ending``); this
thread takes them in batches, decides each arrival and answers it (admit with the metadata to send
upstream, or refuse), and reports each ending, through the call's lifecycle as every door does
(gateway/call/lifecycle.py). One thread decides, as one thread did on every engine before: the
in-memory rate-limit store and users' ``def`` steps count on it, and the plan's periodic jobs run here
too, between batches. A chain that waits (Redis, a user's ``async def`` step, a JWKS refetch) is
finished on the event loop and answered from there, so the thread goes on with the next call meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import grpc
from gateway_native import Arrival, Ending, Server

from gateway.call.chain import Chain, MethodChain
from gateway.call.lifecycle import Pending, begin, decide, end, upstream_metadata
from gateway.call.replies import refusal_headers, reply_headers
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Verdict
from gateway.engines.base import TICK_SECONDS

log = logging.getLogger("gateway.native")

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What an answered call carries to its Ending: its chain and its facts.
Token = tuple[MethodChain, Call]


def _peer(peer: str) -> Callable[[], str]:
    return lambda: peer


class Decider:
    """Decides and observes the calls of one native server, under the current plan's chain."""

    def __init__(self, server: Server, chain: Chain, tick: Callable[[], None]) -> None:
        self.chain = chain  # swapped whole by the engine on a reload
        self._server = server
        self._tick = tick
        self._loop = asyncio.get_running_loop()
        self._waiting: set[asyncio.Task[None]] = set()

    def run(self) -> None:
        """The thread's body: until the server has stopped and its queue is empty."""
        server = self._server
        next_tick = time.monotonic() + TICK_SECONDS
        while (batch := server.next_batch(TICK_SECONDS)) is not None:
            for event in batch:
                if isinstance(event, Ending):
                    self._ended(event)
                else:
                    self._decide(event)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._tick()

    def _decide(self, arrival: Arrival) -> None:
        chain = self.chain.of(arrival.method)
        metadata = arrival.metadata
        facts = Call(
            "grpc", arrival.method, metadata, _peer(arrival.peer), request_id_of(metadata), chain.request_type
        )
        facts.first = arrival.first
        begin(chain, facts)
        verdict = decide(chain, facts)
        if isinstance(verdict, Pending):
            self._finish_on_loop(arrival, chain, facts, verdict)
            return
        _answer(arrival, chain, facts, verdict)

    def _finish_on_loop(self, arrival: Arrival, chain: MethodChain, facts: Call, pending: Pending) -> None:
        async def finish() -> None:
            _answer(arrival, chain, facts, await pending)

        def spawn() -> None:
            task = self._loop.create_task(finish())
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

        self._loop.call_soon_threadsafe(spawn)

    def _ended(self, ending: Ending) -> None:
        token = ending.token
        if token is None:  # refused by the native side itself (draining, out of time) before a decision
            chain = self.chain.of(ending.method)
            facts = Call("grpc", ending.method, (), _peer(""), request_id_of(()), None)
            begin(chain, facts)
        else:
            chain, facts = cast(Token, token)
        facts.received = ending.received
        facts.sent = ending.sent
        end(chain, facts, _CODES.get(ending.code, grpc.StatusCode.UNKNOWN))


def _answer(arrival: Arrival, chain: MethodChain, facts: Call, verdict: Verdict) -> None:
    token: Token = (chain, facts)
    if verdict is None:
        arrival.admit(token, upstream_metadata(chain, facts), reply_headers(None, facts))
    else:
        arrival.refuse(
            token, verdict.code.value[0], verdict.message, refusal_headers(facts), verdict.trailers
        )
