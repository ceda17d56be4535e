"""The native engine's decider: where every call of the native door is decided and observed, on the
event loop's thread.

The native data plane (Rust, ``gateway_native``) carries the bytes on its own I/O threads, which never
take the GIL. It queues each call's facts (an ``Arrival``) and each call's end (an ``Ending``), and
rings a socket once an I/O thread has queued the arrivals its turn produced and goes idle; the event
loop watches that socket and takes the queue in batches, decides each arrival and answers it (admit
with the metadata to send upstream, or refuse), and reports each ending, through the call's lifecycle
as every door does (gateway/call/lifecycle.py). An ending does not ring: it is taken with the next
arrivals, on the engine's tick, or before a metrics scrape (``Server.settle``), and carries how long
ago the call ended; under load a call's end and the next call's arrival then cost one wake-up of
this thread, not two. One Python thread decides, as one thread did on every engine before:
the in-memory rate-limit store and users' ``def`` steps count on it. It is the loop's own thread, so
a chain that waits (Redis, a user's ``async def`` step, a JWKS refetch) goes on as a task on the
same thread, with no hand-over between Python threads: under CPU contention each such hand-over
waited on the scheduler and for the GIL, and a burst of waiting decisions outlasted the store's
timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import grpc
from gateway_native import Arrival, Ending, Server

from gateway.call.chain import Chain, MethodChain
from gateway.call.lifecycle import Pending, begin, decide, end, upstream_metadata
from gateway.call.replies import refusal_headers, reply_headers
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Verdict

log = logging.getLogger("gateway.native")

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What an answered call carries to its Ending: its chain and its facts.
Token = tuple[MethodChain, Call]


def _peer(peer: str) -> Callable[[], str]:
    return lambda: peer


class Decider:
    """Decides and observes the calls of one native server, under the current plan's chain.

    Build it inside the running event loop; ``start`` watches the server's queue, and ``stopped``
    is done once the server has stopped and its queue is empty.
    """

    def __init__(self, server: Server, chain: Chain) -> None:
        self.chain = chain  # swapped whole by the engine on a reload
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._waiting: set[asyncio.Task[None]] = set()
        self.stopped: asyncio.Future[None] = self._loop.create_future()

    def start(self) -> None:
        self._loop.add_reader(self._server.fileno(), self.take)

    def take(self) -> None:
        """One batch of what is queued (the queue rings again while more waits, so other callbacks
        of the loop run between batches of a flood). On the loop's thread."""
        batch = self._server.take_batch()
        if batch is None:
            self._loop.remove_reader(self._server.fileno())
            if not self.stopped.done():
                self.stopped.set_result(None)
            return
        for event in batch:
            if isinstance(event, Ending):
                self._ended(event)
            else:
                self._decide(event)

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

        task = self._loop.create_task(finish())
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

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
        end(chain, facts, _CODES.get(ending.code, grpc.StatusCode.UNKNOWN), ending.ago)


def _answer(arrival: Arrival, chain: MethodChain, facts: Call, verdict: Verdict) -> None:
    token: Token = (chain, facts)
    if verdict is None:
        arrival.admit(token, upstream_metadata(chain, facts), reply_headers(None, facts))
    else:
        arrival.refuse(
            token, verdict.code.value[0], verdict.message, refusal_headers(facts), verdict.trailers
        )
