"""One call through the core engine: admission by the chain, then unary forwarding or a stream pump.

A call's steps run on the poll thread of whichever queue completed its last operation: the
listener's for the caller's side, the upstream channel's for the upstream's. Each direction is a
chain of one operation at a time, so only a streamed reply (``stream.py``) needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from grpc._common import STATUS_CODE_TO_CYGRPC_STATUS_CODE
from grpc._cython import cygrpc

from gateway.call.chain import Deferred
from gateway.call.replies import (
    OUT_OF_TIME,
    incomplete_request,
    refusal_headers,
    reply_headers,
    unavailable_message,
    upstream_timeout,
)
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Metadata, Refusal, Verdict
from gateway.engines.core.carrying import Carrying, Method
from gateway.engines.core.channel import NO_FLAGS, ignore, status_code, unary_operations
from gateway.engines.core.stream import StreamPump
from gateway.routing.table import MethodRoute

log = logging.getLogger("gateway.core")

_OK = cygrpc.StatusCode.ok
_CANCELLED = grpc.StatusCode.CANCELLED
_UNDECIDED = Refusal(grpc.StatusCode.INTERNAL, "the gateway failed to decide on this call")


class CoreCall:
    """One call, from its arrival to its status."""

    __slots__ = (
        "_carrying",
        "_chain",
        "_method",
        "_started",
        "call",
        "caller_done",
        "deadline",
        "facts",
        "sent_code",
        "upstream",
    )

    def __init__(self, carrying: Carrying, event: Any) -> None:
        self._carrying = carrying
        self.call = event.call
        path: str = event.call_details.method.decode("utf-8", "replace")
        self.deadline: float = event.call_details.deadline
        metadata: Metadata = event.invocation_metadata
        method = self._method = carrying.methods.get(path)
        chain = self._chain = method.chain if method is not None else carrying.chain.unrouted
        self.facts = Call("grpc", path, metadata, self.peer, request_id_of(metadata), chain.request_type)
        self.upstream: Any = None
        self.sent_code = grpc.StatusCode.OK
        self.caller_done = False  # cancelled by the caller, or out of time
        self._started = 0.0

    def peer(self) -> str:
        peer: bytes = self.call.peer()
        return peer.decode("utf-8", "replace")

    # Admission: read the first request if it is needed, run the chain, refuse or forward.

    def begin(self) -> None:
        self._started = self.facts.started = self._chain.observer.start()
        self.call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(NO_FLAGS),), self._on_close)
        method = self._method
        if method is not None and (not method.client_streaming or self._chain.reads_request):
            self.call.start_server_batch((cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_first_request)
        else:
            self._decide()

    def _on_first_request(self, event: Any) -> None:
        if not event.success:
            return  # the caller is gone; _on_close ends the call
        first = event.batch_operations[0].message()
        method = self._method
        if first is None and method is not None and not method.client_streaming:
            # Ended before its request had arrived whole (grpc.aio never answers such a call).
            self.refuse(incomplete_request(self.facts.method))
            return
        self.facts.first = first
        self._decide()

    def _decide(self) -> None:
        chain = self._chain
        if not chain.waits:
            try:
                verdict = chain.decide(self.facts)
            except Deferred as deferred:  # a check must wait this once: the rest on the loop
                waiting = deferred.rest
            else:
                self._decided(verdict)
                return
        else:
            waiting = chain.decide_waiting(self.facts)
        future = asyncio.run_coroutine_threadsafe(waiting, self._carrying.loop)
        future.add_done_callback(self._decided_later)

    def _decided_later(self, done: Any) -> None:
        try:
            verdict = done.result()
        except BaseException:  # the loop stopped under it, say: the call still gets a status
            log.exception("core engine: a call's chain did not finish")
            verdict = _UNDECIDED
        self._decided(verdict)

    def _decided(self, verdict: Verdict) -> None:
        method = self._method
        if verdict is not None:
            self.refuse(verdict)
        elif method is not None:
            self._forward(method)
        else:
            raise RuntimeError(f"the chain let an unrouted call to {self.facts.method} through")

    def _upstream_deadline(self, route: MethodRoute | None, now: float) -> float | None:
        default = route.default_timeout if route is not None else None
        timeout = upstream_timeout(self.deadline - now, default)
        return None if timeout is None else now + timeout

    def _forward(self, method: Method) -> None:
        now = time.time()
        deadline = self._upstream_deadline(method.route, now)
        if deadline is not None and deadline <= now:
            # grpc's timers may not have fired yet: a call out of time is never sent on.
            self.refuse(OUT_OF_TIME)
            return
        metadata = self._chain.observer.forwarding(self.facts)
        if method.client_streaming or method.server_streaming:
            read = not method.client_streaming or self._chain.reads_request
            StreamPump(self, method).start(deadline, metadata, read)
        else:
            operations = unary_operations(metadata, self.facts.first)
            self.upstream = method.channel.start(
                method.path, deadline, metadata, ((operations, self._on_reply),)
            )
        if self.caller_done:  # cancelled while the chain waited on the event loop
            self.upstream.cancel(cygrpc.StatusCode.cancelled, "the caller cancelled")

    # The reply to a unary call: one batch from the upstream, one batch back.

    def _on_reply(self, event: Any) -> None:
        operations = event.batch_operations
        status = operations[5]
        code = status.code()
        details = status.details()
        trailers = status.trailing_metadata()
        headers = self.reply_headers(operations[3].initial_metadata())
        if code != _OK:
            headers, code, details, trailers = self.failure(headers, code, details, trailers)
        batch: list[Any] = [cygrpc.SendInitialMetadataOperation(headers, NO_FLAGS)]
        reply = operations[4].message()
        if reply is not None:
            batch.append(cygrpc.SendMessageOperation(reply, NO_FLAGS))
        self.sent_code = status_code(code)
        batch.append(cygrpc.SendStatusFromServerOperation(trailers, code, details, NO_FLAGS))
        self.call.start_server_batch(batch, ignore)

    def reply_headers(self, upstream: Metadata | None) -> Metadata:
        if self._method is None or self._method.route is None:
            return upstream or ()  # the gateway's own services: their headers as they are
        return reply_headers(upstream, self.facts)

    def failure(self, headers: Metadata, code: int, details: str, trailers: Metadata) -> tuple[Any, ...]:
        """A failed upstream call as the caller sees it: unchanged, except a connection failure."""
        route = self._method.route if self._method is not None else None
        if route is not None:
            message = unavailable_message(route.upstream, route.service, status_code(code), details, trailers)
            if message is not None:
                return self.reply_headers(None), code, message, ()
        return headers, code, details, trailers

    # The end.

    def refuse(self, refusal: Refusal) -> None:
        """End the call with the gateway's own status; like every reply, it carries the request id."""
        self.sent_code = refusal.code
        self.call.start_server_batch(
            (
                cygrpc.SendInitialMetadataOperation(refusal_headers(self.facts), NO_FLAGS),
                cygrpc.SendStatusFromServerOperation(
                    refusal.trailers,
                    STATUS_CODE_TO_CYGRPC_STATUS_CODE[refusal.code],
                    refusal.message,
                    NO_FLAGS,
                ),
            ),
            ignore,
        )

    def _on_close(self, event: Any) -> None:
        """The call is over: sent its status, or was cancelled (by the caller, or its deadline)."""
        cancelled = bool(event.batch_operations[0].cancelled())
        if cancelled:
            self.caller_done = True
            upstream = self.upstream
            if upstream is not None:
                upstream.cancel(cygrpc.StatusCode.cancelled, "the caller cancelled")
        self._chain.observer.ended(self.facts, _CANCELLED if cancelled else self.sent_code, self._started)
