"""The HTTP door's connections: how many may be open, and how long one may take to send a request head.

uvicorn's own settings do not shed these (uvicorn 0.55, httptools):

- ``timeout_keep_alive`` is one timer, armed only once a response is complete and cancelled by any
  byte that arrives: a connection that never sends a request is never timed, and one that sends its
  head a byte at a time (slowloris) keeps cancelling it.
- ``limit_concurrency`` answers 503 only once a whole request head has arrived, so a connection that
  sends nothing holds its file descriptor until the client lets go; and it counts tasks with
  connections, so streams in flight would refuse new connections.

So the door's protocol is uvicorn's with two additions, per connection and timer-based (no polling):

- a **header timer**: a connection that has not sent a whole request head ``header_timeout`` seconds
  after it opened, or after the first byte of a later request, is closed. Between requests uvicorn's
  keep-alive timer (``idle_timeout``) runs as before; bytes that start no request (blank lines) arm
  the header timer, so they cannot keep a connection open either.
- a **cap on open connections**: a connection over ``max_connections`` is answered at once, before
  its request is read, ``503`` with ``Connection: close`` and a JSON ``google.rpc.Status`` (as the
  door's other refusals), then closed. An answer tells a client or a load balancer to go elsewhere
  or retry, where a connection closed at accept looks like a network fault. Answering costs the
  connection's descriptor only while the answer is written and the client's request drained (a
  close with unread bytes would reset the connection and lose the answer), at most ``LINGER``
  seconds; and at most ``max_connections // 8`` (≥ 1) connections are being refused at once,
  beyond which a connection is closed at accept, so a flood cannot use up the descriptors the cap
  keeps for the gRPC door. Refusals are logged, one line per ``LOG_INTERVAL`` at most.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gateway.http")

# Seconds a refused connection is kept to drain the client's request after the answer.
LINGER = 2.0
# Seconds between two log lines about refused connections.
LOG_INTERVAL = 10.0
# The default cap is half the open-file limit (the rest is the gRPC door's, the upstream channels',
# the rate-limit store's and the log files'), and at most this many.
DEFAULT_MAX_CONNECTIONS = 10_000


def max_connections(configured: int | None) -> int:
    """``[http] max_connections`` (a warning when it is over half the open-file limit), or by default
    half the open-file limit, at most ``DEFAULT_MAX_CONNECTIONS``."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    half = None if soft == resource.RLIM_INFINITY else max(1, soft // 2)
    if configured is None:
        return DEFAULT_MAX_CONNECTIONS if half is None else min(DEFAULT_MAX_CONNECTIONS, half)
    if half is not None and configured > half:
        log.warning(
            "http.max_connections leaves less than half the open-file limit to the rest of the gateway",
            extra={"max_connections": configured, "open_file_limit": soft},
        )
    return configured


def _refusal(max_connections: int) -> bytes:
    """The whole reply to a connection over the cap (UNAVAILABLE, as google.rpc.Status JSON)."""
    body = json.dumps(
        {
            "code": 14,
            "message": f"the HTTP door has {max_connections} connections open, its limit; retry shortly",
            "details": [],
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class Shedding:
    """One listener's limits, and the connections it is refusing; changed in place by a reload."""

    def __init__(self, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.refusal = _refusal(max_connections)
        self.refusing = 0  # connections being answered 503 now
        self._answered = 0  # refused since the last log line: answered 503, closed at accept
        self._dropped = 0
        self._next_log = 0.0
        self._log_pending: asyncio.TimerHandle | None = None

    def limit(self, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        if max_connections != self.max_connections:
            self.max_connections = max_connections
            self.refusal = _refusal(max_connections)

    @property
    def max_refusing(self) -> int:
        return max(1, self.max_connections // 8)

    def refused(self, loop: asyncio.AbstractEventLoop, answered: bool) -> None:
        if answered:
            self._answered += 1
        else:
            self._dropped += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._log()
        elif self._log_pending is None:
            self._log_pending = loop.call_later(self._next_log - now, self._log)

    def _log(self) -> None:
        self._log_pending = None
        if not self._answered and not self._dropped:
            return
        log.warning(
            "HTTP connections refused: the door is at max_connections",
            extra={  # since the previous such line
                "max_connections": self.max_connections,
                "answered_503": self._answered,
                "closed_at_accept": self._dropped,
            },
        )
        self._answered = self._dropped = 0
        self._next_log = time.monotonic() + LOG_INTERVAL


class ShedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timer and the cap (see the module's docstring).

    Made per listener by :func:`protocol_class`, which binds ``shedding``.
    """

    shedding: ClassVar[Shedding]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's head has begun and not ended
        self._refused: asyncio.TimerHandle | None = None  # a refused connection's linger

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        shedding = self.shedding
        if len(self.connections) >= shedding.max_connections:
            self._refuse(transport, shedding)
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.Transport, shedding: Shedding) -> None:
        self.transport = transport
        if shedding.refusing >= shedding.max_refusing:
            shedding.refused(self.loop, answered=False)
            transport.abort()
            return
        shedding.refusing += 1
        shedding.refused(self.loop, answered=True)
        transport.write(shedding.refusal)
        if transport.can_write_eof():
            transport.write_eof()
        self._refused = self.loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # a refused connection's request: drained unread
        super().data_received(data)
        if self._head_timer is None:
            # Armed only for a head these bytes left unfinished (a head that came whole costs no
            # timer), or for bytes between requests that began none.
            cycle = self.cycle
            if self._in_head or cycle is None or cycle.response_complete:
                self._arm_head_timer()

    def eof_received(self) -> None:
        if self._refused is not None:
            self.transport.close()  # the client has read the answer and gone
            return
        super().eof_received()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused is not None:
            self._refused.cancel()
            self.shedding.refusing -= 1
            return
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.shedding.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The next request's head came early (pipelined) while a reply is still going out:
            # the reply is not cut; the head's time counts again from now.
            self._arm_head_timer()
        elif not self.transport.is_closing():
            self.transport.close()


def protocol_class(shedding: Shedding) -> type[ShedProtocol]:
    """The protocol of one listener's connections, sharing ``shedding``."""
    return type("ListenerProtocol", (ShedProtocol,), {"shedding": shedding})
