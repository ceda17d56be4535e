"""A streaming call's pump: requests up and replies down, one message at a time each way.

Replies are read ahead: while one is being sent to the caller the next are read from the
upstream, up to READ_AHEAD_BYTES, so that neither side waits for the other and each thread
handles runs of completions instead of waking the other for every message.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Protocol

import grpc
from grpc._cython import cygrpc

from gateway.call.step import Call, Metadata
from gateway.engines.core.carrying import Method
from gateway.engines.core.channel import NO_FLAGS, ignore, status_code

# Reply bytes a streamed call may hold between the upstream and a slower caller (at least one message).
READ_AHEAD_BYTES = 64 * 1024


class PumpedCall(Protocol):
    """What the pump needs of its call (gateway/engines/core/call.py)."""

    call: Any  # the caller's side (a cygrpc server call)
    upstream: Any  # the upstream's side, once started
    facts: Call
    sent_code: grpc.StatusCode

    def reply_headers(self, upstream: Metadata | None) -> Metadata: ...

    def failure(self, headers: Metadata, code: int, details: str, trailers: Metadata) -> tuple[Any, ...]: ...


class StreamPump:
    """The state a streamed call shares between the listener's thread and the channel's."""

    __slots__ = (
        "_call",
        "_channel",
        "_finished",
        "_lock",
        "_method",
        "_reading",
        "_replies_ended",
        "_sending",
        "_status",
        "_waiting",
        "_waiting_bytes",
    )

    def __init__(self, call: PumpedCall, method: Method) -> None:
        self._call = call
        self._method = method
        self._channel = method.channel
        self._lock = threading.Lock()
        self._status: Any = None  # the upstream's, once received
        self._reading = False  # a read from the upstream is under way
        self._sending = False  # a send to the caller is under way
        self._waiting: deque[bytes] = deque()  # read, waiting for the sends before them
        self._waiting_bytes = 0
        self._replies_ended = False
        self._finished = False

    def start(self, deadline: float | None, metadata: Metadata, read: bool) -> None:
        """Start the upstream call with what the caller has sent so far; ``read``: its first
        request was read (``facts.first``, None if it sent none)."""
        method, call = self._method, self._call
        first = call.facts.first
        sends: list[Any] = [cygrpc.SendInitialMetadataOperation(metadata, NO_FLAGS)]
        if read:
            if first is not None:
                call.facts.received += 1
                sends.append(cygrpc.SendMessageOperation(first, NO_FLAGS))
            if first is None or not method.client_streaming:
                sends.append(cygrpc.SendCloseFromClientOperation(NO_FLAGS))
        requests_open = method.client_streaming and not (read and first is None)
        call.upstream = self._channel.start(
            method.path,
            deadline,
            metadata,
            (
                (tuple(sends), self._on_request_sent if requests_open else ignore),
                ((cygrpc.ReceiveInitialMetadataOperation(NO_FLAGS),), self._on_reply_headers),
                ((cygrpc.ReceiveStatusOnClientOperation(NO_FLAGS),), self._on_upstream_status),
            ),
        )

    # Requests up.

    def _on_request_sent(self, event: Any) -> None:
        if event.success:
            self._call.call.start_server_batch((cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_request)

    def _on_request(self, event: Any) -> None:
        if not event.success:
            return
        message = event.batch_operations[0].message()
        upstream = self._call.upstream
        if message is None:
            self._channel.operate(upstream, (cygrpc.SendCloseFromClientOperation(NO_FLAGS),), ignore)
        else:
            self._call.facts.received += 1  # requests come one at a time, on the listener's thread
            self._channel.operate(
                upstream, (cygrpc.SendMessageOperation(message, NO_FLAGS),), self._on_request_sent
            )

    # Replies down.

    def _on_reply_headers(self, event: Any) -> None:
        headers = self._call.reply_headers(event.batch_operations[0].initial_metadata())
        with self._lock:
            self._sending = True
            read = self._may_read()
        self._call.call.start_server_batch(
            (cygrpc.SendInitialMetadataOperation(headers, NO_FLAGS),), self._on_reply_sent
        )
        if read:
            self._read_reply()

    # The _may_* checks run under self._lock and claim what they allow.

    def _may_read(self) -> bool:
        if self._reading or self._replies_ended or self._waiting_bytes >= READ_AHEAD_BYTES:
            return False
        self._reading = True
        return True

    def _may_finish(self) -> bool:
        if self._finished or self._status is None or not self._replies_ended:
            return False
        if self._sending or self._waiting:
            return False
        self._finished = True
        return True

    def _read_reply(self) -> None:
        reading = self._channel.operate(
            self._call.upstream, (cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_streamed_reply
        )
        if not reading:
            # cygrpc takes no more operations once none is due and the status is in; grpc delivers
            # the status only after the last message was read, so nothing is left to read.
            with self._lock:
                self._reading = False
                self._replies_ended = True
                finish = self._may_finish()
            if finish:
                self._send_status()

    def _on_streamed_reply(self, event: Any) -> None:
        message = event.batch_operations[0].message() if event.success else None
        send_now = read = finish = False
        with self._lock:
            self._reading = False
            if message is None:
                self._replies_ended = True
                finish = self._may_finish()
            else:
                self._call.facts.sent += 1
                if self._sending:
                    self._waiting.append(message)
                    self._waiting_bytes += len(message)
                else:
                    self._sending = send_now = True
                read = self._may_read()
        self._go_on(message if send_now else None, read, finish)

    def _on_reply_sent(self, event: Any) -> None:
        if not event.success:
            return  # the caller is gone; the call's close cancels the upstream call
        with self._lock:
            message = None
            if self._waiting:
                message = self._waiting.popleft()
                self._waiting_bytes -= len(message)
            self._sending = message is not None
            read = self._may_read()
            finish = self._may_finish()
        self._go_on(message, read, finish)

    def _go_on(self, message: bytes | None, read: bool, finish: bool) -> None:
        """Do what the last step claimed: send ``message`` on, read the next reply, send the status."""
        if message is not None:
            self._call.call.start_server_batch(
                (cygrpc.SendMessageOperation(message, NO_FLAGS),), self._on_reply_sent
            )
        if read:
            self._read_reply()
        if finish:
            self._send_status()

    def _on_upstream_status(self, event: Any) -> None:
        with self._lock:
            self._status = event.batch_operations[0]
            finish = self._may_finish()
        if finish:
            self._send_status()

    def _send_status(self) -> None:
        """The upstream's status, once every reply before it has been passed on."""
        status = self._status
        code, details, trailers = status.code(), status.details(), status.trailing_metadata()
        if code != cygrpc.StatusCode.ok:
            _, code, details, trailers = self._call.failure((), code, details, trailers)
        self._call.sent_code = status_code(code)
        self._call.call.start_server_batch(
            (cygrpc.SendStatusFromServerOperation(trailers, code, details, NO_FLAGS),), ignore
        )
