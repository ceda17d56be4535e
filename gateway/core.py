"""The core engine: forwarding on grpcio's core layer (``grpc._cython.cygrpc``), no asyncio per call.

grpc.aio spends most of a forwarded call's CPU on its own machinery: a task, a servicer context,
a separate batch for each operation, and a hop through the event loop for each completion. Here
one thread polls the listener's completion queue and one each upstream channel's; a unary call
is read with one batch, forwarded upstream as one batch and answered as one batch. The decisions
are the aio path's own (``Authenticator``, ``MethodGuard``, ``CallObservers``, the proxy's metadata
rules); only the carrying of bytes differs. The asyncio loop still runs the rest: health,
reflection (served by the aio server on a private socket, reached through the same forwarding),
health checks, metrics, reloads, and rate-limit decisions that need the network (Redis).

``cygrpc`` is private to grpcio, so grpcio is pinned to the minor release this is tested on
(pyproject.toml), and ``engine = "aio"`` in the config selects the public-API path instead.

Threads: a call's steps run on the poll thread of whichever queue completed the last operation;
each direction of a call is a chain of one operation at a time, so only the end of a streamed
reply (last message read, status received) needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE, STATUS_CODE_TO_CYGRPC_STATUS_CODE
from grpc._cython import cygrpc

from gateway import channels
from gateway.accesslog import method_part
from gateway.auth import Authenticator, AuthRefusal
from gateway.callstate import Metadata
from gateway.config import Route, UpstreamKeepalive
from gateway.memstore import BoundedMemoryStorage
from gateway.metadata_check import unforwardable_header, unforwardable_message
from gateway.observe import CallObservers, CallRecord, MethodObserver
from gateway.proxy import MAX_UPSTREAM_TIMEOUT, forwarded, unavailable_message, unrouted_message
from gateway.ratelimit import CallFacts, Decision, MethodGuard
from gateway.requestid import HEADER as REQUEST_ID_HEADER
from gateway.requestid import request_id_of
from gateway.routes import MethodRoute, RouteTable
from gateway.tls import UpstreamTransport
from runtime.serving import cannot_listen

log = logging.getLogger("gateway.core")

_NO_FLAGS = 0
# The grpcio release the core engine is tested on (pyproject.toml pins the same): cygrpc is private.
TESTED_GRPCIO = "1.85."
# How often the listener's poll thread looks up from calls: access-log flushes, expired budgets.
TICK_SECONDS = 0.25
_SWEEP_PER_TICK = 2000
# Reply bytes a streamed call may hold between the upstream and a slower caller (at least one message).
READ_AHEAD_BYTES = 64 * 1024
_OK = cygrpc.StatusCode.ok
_CANCELLED = grpc.StatusCode.CANCELLED


def _status_code(code: int) -> grpc.StatusCode:
    return CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(code, grpc.StatusCode.UNKNOWN)


def _run_inline(coroutine: Coroutine[Any, Any, Decision]) -> Decision:
    """Run a coroutine that never suspends (a decision on memory storage) to its end, here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Decision = done.value
        return result
    coroutine.close()
    raise RuntimeError("a rate-limit decision on memory storage waited; it needs an event loop")


class UpstreamChannel:
    """One cygrpc channel and the thread that runs the completions of its calls.

    The thread waits on the channel's queue only while some operation is under way: a thread
    blocked on a grpc queue takes turns at grpc's network polling even when it has nothing to
    do, and hands each turn's work on with a wake-up, which costs the busy threads CPU.
    """

    def __init__(
        self, name: str, target: str, options: Sequence[tuple[str, Any]], credentials: Any = None
    ) -> None:
        self._channel = cygrpc.Channel(target.encode(), tuple(options), credentials)
        self._outstanding = 0  # operation batches started and not yet completed
        self._closed = False
        self._work = threading.Condition()
        self._thread = threading.Thread(target=self._poll, name=f"core-channel {name}", daemon=True)
        self._thread.start()

    # Batches are counted under the lock they are started under, so the thread never sees a count
    # that no batch backs: once closed with nothing under way, the channel's queue is gone.

    def start(self, method: bytes, deadline: float | None, metadata: Metadata, batches: Any) -> Any:
        """Start a call with ``batches``: (operations, handler of their completion) pairs."""
        with self._work:
            call = self._channel.integrated_call(
                _NO_FLAGS, method, None, deadline, metadata, None, batches, None, None
            )
            self._started(len(batches))
        return call

    def operate(self, call: Any, operations: Any, handler: Callable[[Any], None]) -> bool:
        """Start another batch on ``call``; False when the call is over and took none."""
        with self._work:
            if not call.operate(operations, handler):
                return False
            self._started(1)
        return True

    def _started(self, batches: int) -> None:
        self._outstanding += batches
        if self._outstanding == batches:
            self._work.notify()

    def _poll(self) -> None:
        completed = 0
        while True:
            with self._work:
                self._outstanding -= completed
                while self._outstanding == 0 and not self._closed:
                    self._work.wait()
                if self._outstanding == 0:
                    return  # closed, and nothing left to complete
            event = self._channel.next_call_event()
            completed = 0
            if event.completion_type == cygrpc.CompletionType.operation_complete:
                _handle(event)
                completed = 1
            elif event.completion_type == cygrpc.CompletionType.queue_shutdown:
                return

    def close(self) -> None:
        with self._work:
            self._closed = True
            self._work.notify()
        self._channel.close(cygrpc.StatusCode.unavailable, "the gateway closed this upstream channel")


def _handle(event: Any) -> None:
    try:
        event.tag(event)
    except Exception:  # a bug in one call must not stop the thread that carries every call
        log.exception("core engine: a call step failed")


@dataclass(frozen=True)
class _Method:
    """How the calls of one path are carried: where to, of which kind, under which limits."""

    path: bytes
    channel: UpstreamChannel
    route: MethodRoute | None  # None: one of the gateway's own methods (health, reflection)
    client_streaming: bool
    server_streaming: bool
    guard: MethodGuard | None
    observer: MethodObserver


@dataclass(frozen=True)
class Plan:
    """Everything a configuration decides about calls; replaced whole by a reload."""

    methods: dict[str, _Method]
    routes: RouteTable
    authenticator: Authenticator
    observers: CallObservers
    # Memory storage decides on the poll thread; a network store's decisions go to the event loop.
    loop: asyncio.AbstractEventLoop | None
    channels: tuple[UpstreamChannel, ...]
    storage: Any

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def build_plan(
    routes: RouteTable,
    channels: dict[str, UpstreamChannel],
    local: dict[str, tuple[bool, bool]],
    local_channel: UpstreamChannel,
    guards: dict[str, MethodGuard],
    authenticator: Authenticator,
    observers: CallObservers,
    storage: Any,
    loop: asyncio.AbstractEventLoop,
) -> Plan:
    """``channels`` by upstream; ``local``: the gateway's own paths and their kinds (client, server
    streaming), served behind ``local_channel``."""
    methods = {
        path: _Method(
            path.encode(),
            channels[route.upstream],
            route,
            route.client_streaming,
            route.server_streaming,
            guards.get(path),
            observers.methods[path],
        )
        for path, route in routes.methods.items()
    }
    for path, (client_streaming, server_streaming) in local.items():
        methods[path] = _Method(
            path.encode(),
            local_channel,
            None,
            client_streaming,
            server_streaming,
            None,
            observers.methods[path],
        )
    inline = isinstance(storage, BoundedMemoryStorage)
    return Plan(
        methods,
        routes,
        authenticator,
        observers,
        None if inline else loop,
        (*channels.values(), local_channel),
        storage,
    )


class CoreServer:
    """The listener: takes calls from its completion queue and runs them by the current ``plan``."""

    def __init__(
        self, plan: Plan, address: str, credentials: grpc.ServerCredentials | None, options: Sequence[Any]
    ) -> None:
        if not grpc.__version__.startswith(TESTED_GRPCIO):
            log.warning(
                'the core engine is tested with another grpcio; if calls misbehave, set engine = "aio"',
                extra={"grpcio": grpc.__version__, "tested": f"{TESTED_GRPCIO}x"},
            )
        self.plan = plan
        self._queue = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._queue)
        if credentials is None:
            port = self._server.add_http2_port(address.encode())
        else:
            port = self._server.add_http2_port(address.encode(), credentials._credentials)
        if port == 0:
            raise cannot_listen(address)
        self.port: int = port
        self._stopping = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="core-listener", daemon=True)

    def start(self) -> None:
        self._server.start()
        self._server.request_call(self._queue, self._queue, self._new_call)
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Take no new calls; cancel those still running after ``grace`` seconds. Blocks until done."""
        self._stopping = True
        self._server.shutdown(self._queue, self._shut_down)
        if not self._stopped.wait(grace):
            self._server.cancel_all_calls()
            self._stopped.wait()
        self._thread.join()

    def _shut_down(self, event: Any) -> None:
        self._stopped.set()

    def _poll(self) -> None:
        next_tick = time.monotonic() + TICK_SECONDS
        while not self._stopped.is_set():
            event = self._queue.poll(time.time() + TICK_SECONDS)
            if event.completion_type == cygrpc.CompletionType.operation_complete:
                _handle(event)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._tick()
        self._server.destroy()

    def _tick(self) -> None:
        plan = self.plan
        log_ = plan.observers.access_log
        if log_ is not None:
            log_.flush()
        if plan.loop is None:
            plan.storage.sweep(_SWEEP_PER_TICK)

    def _new_call(self, event: Any) -> None:
        if not self._stopping:
            self._server.request_call(self._queue, self._queue, self._new_call)
        if event.success and event.call is not None:
            _Call(self.plan, event).begin()


class _Call:
    """One call through the gateway, from its arrival to its status."""

    __slots__ = (
        "_caller_done",
        "_client",
        "_finished",
        "_headers",
        "_lock",
        "_method",
        "_observer",
        "_path",
        "_plan",
        "_reading",
        "_record",
        "_replies_ended",
        "_sending",
        "_sent_code",
        "_started",
        "_status",
        "_upstream",
        "_waiting",
        "_waiting_bytes",
        "call",
        "deadline",
        "metadata",
    )

    def __init__(self, plan: Plan, event: Any) -> None:
        self._plan = plan
        self.call = event.call
        self._path: str = event.call_details.method.decode("utf-8", "replace")
        self.deadline: float = event.call_details.deadline
        self.metadata: Metadata = event.invocation_metadata
        self._method = plan.methods.get(self._path)
        self._observer = self._method.observer if self._method is not None else plan.observers.unrouted
        self._record = CallRecord(request_id_of(self.metadata), plan.observers.metrics)
        self._client: str | None = None
        self._headers: Metadata = ()
        self._upstream: Any = None
        self._sent_code = grpc.StatusCode.OK
        self._caller_done = False  # cancelled by the caller, or out of time
        # A streamed reply's state, shared by the listener's and the channel's threads.
        self._lock = threading.Lock()
        self._status: Any = None  # the upstream's, once received
        self._reading = False  # a read from the upstream is under way
        self._sending = False  # a send to the caller is under way
        self._waiting: deque[bytes] = deque()  # read, waiting for the sends before them
        self._waiting_bytes = 0
        self._replies_ended = False
        self._finished = False
        self._started = 0.0

    def _method_channel(self) -> UpstreamChannel:
        assert self._method is not None
        return self._method.channel

    def peer(self) -> str:
        peer: bytes = self.call.peer()
        return peer.decode("utf-8", "replace")

    def begin(self) -> None:
        self._started = self._observer.start()
        self.call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS),), self._on_close)
        header = unforwardable_header(self.metadata)
        if header is not None:
            self._refuse(grpc.StatusCode.INVALID_ARGUMENT, unforwardable_message(header))
            return
        plan = self._plan
        if not plan.authenticator.is_public(self._path):
            verdict = plan.authenticator.admit(self._path, self.metadata, self.peer)
            if isinstance(verdict, AuthRefusal):
                self._record.count_auth_failure(verdict.reason)
                self._refuse(verdict.code, verdict.message, verdict.trailers)
                return
            self._client = verdict.name
        method = self._method
        if method is None:
            self._refuse(grpc.StatusCode.UNIMPLEMENTED, unrouted_message(plan.routes, self._path))
            return
        if not method.client_streaming or (method.guard is not None and method.guard.reads_request):
            self.call.start_server_batch((cygrpc.ReceiveMessageOperation(_NO_FLAGS),), self._on_first_request)
        else:
            self._decide(None, read=False)

    def _on_first_request(self, event: Any) -> None:
        if not event.success:
            return  # the caller is gone; _on_close ends the call
        first = event.batch_operations[0].message()
        method = self._method
        if first is None and method is not None and not method.client_streaming:
            # Ended before its request had arrived whole (grpc.aio never answers such a call).
            name = self._path.rsplit("/", 1)[-1]
            self._refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the call ended without a whole request message; {name} takes exactly one",
            )
            return
        self._decide(first, read=True)

    def _decide(self, first: bytes | None, read: bool) -> None:
        """Spend the rate limit (if any rule covers the method), then forward; ``read``: ``first``
        is the caller's first request (None: it sent none)."""
        guard = self._method.guard if self._method is not None else None
        if guard is None:
            self._forward(first, read)
            return
        facts = CallFacts(self.metadata, self.peer, self._client or "")
        if self._plan.loop is None:
            self._decided(_run_inline(guard.decide(facts, first)), first, read)
            return
        future = asyncio.run_coroutine_threadsafe(guard.decide(facts, first), self._plan.loop)
        future.add_done_callback(lambda done: self._decided_later(done, first, read))

    def _decided_later(self, done: Any, first: bytes | None, read: bool) -> None:
        try:
            decision = done.result()
        except Exception:
            log.exception("core engine: a rate-limit decision failed")
            self._refuse(grpc.StatusCode.INTERNAL, "the gateway failed to apply its rate limit")
            return
        self._decided(decision, first, read)

    def _decided(self, decision: Decision, first: bytes | None, read: bool) -> None:
        if decision.store_error:
            self._record.store_error()
        if decision.refused_by is not None:
            self._record.count_rate_limited(decision.refused_by)
        if decision.code is not None:
            self._refuse(decision.code, decision.message, decision.trailers)
            return
        self._headers = decision.headers
        self._forward(first, read)

    def _upstream_deadline(self, route: MethodRoute | None) -> float | None:
        """The caller's deadline, or the route's default timeout when the caller set none."""
        now = time.time()
        if self.deadline - now <= MAX_UPSTREAM_TIMEOUT:
            return self.deadline
        if route is None or route.default_timeout is None:
            return None
        return now + route.default_timeout

    def _forward(self, first: bytes | None, read: bool) -> None:
        method = self._method
        assert method is not None
        metadata = forwarded(self.metadata, self._client or "", self._record.request_id)
        deadline = self._upstream_deadline(method.route)
        if deadline is not None and deadline <= time.time():
            # grpc's timers may not have fired yet: a call out of time is never sent on.
            self._refuse(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call was forwarded"
            )
            return
        if not method.client_streaming and not method.server_streaming:
            operations = (
                cygrpc.SendInitialMetadataOperation(metadata, _NO_FLAGS),
                cygrpc.SendMessageOperation(first, _NO_FLAGS),
                cygrpc.SendCloseFromClientOperation(_NO_FLAGS),
                cygrpc.ReceiveInitialMetadataOperation(_NO_FLAGS),
                cygrpc.ReceiveMessageOperation(_NO_FLAGS),
                cygrpc.ReceiveStatusOnClientOperation(_NO_FLAGS),
            )
            self._upstream = method.channel.start(
                method.path, deadline, metadata, ((operations, self._on_reply),)
            )
        else:
            sends: list[Any] = [cygrpc.SendInitialMetadataOperation(metadata, _NO_FLAGS)]
            if read:
                if first is not None:
                    sends.append(cygrpc.SendMessageOperation(first, _NO_FLAGS))
                if first is None or not method.client_streaming:
                    sends.append(cygrpc.SendCloseFromClientOperation(_NO_FLAGS))
            requests_open = method.client_streaming and not (read and first is None)
            self._upstream = method.channel.start(
                method.path,
                deadline,
                metadata,
                (
                    (tuple(sends), self._on_request_sent if requests_open else _ignore),
                    ((cygrpc.ReceiveInitialMetadataOperation(_NO_FLAGS),), self._on_reply_headers),
                    ((cygrpc.ReceiveStatusOnClientOperation(_NO_FLAGS),), self._on_upstream_status),
                ),
            )
        if self._caller_done:  # cancelled while the decision was made on the event loop
            self._upstream.cancel(cygrpc.StatusCode.cancelled, "the caller cancelled")

    # The reply to a unary call: one batch from the upstream, one batch back.

    def _on_reply(self, event: Any) -> None:
        operations = event.batch_operations
        status = operations[5]
        code = status.code()
        details = status.details()
        trailers = status.trailing_metadata()
        headers = self._reply_headers(operations[3].initial_metadata())
        if code != _OK:
            headers, code, details, trailers = self._failure(headers, code, details, trailers)
        batch: list[Any] = [cygrpc.SendInitialMetadataOperation(headers, _NO_FLAGS)]
        reply = operations[4].message()
        if reply is not None:
            batch.append(cygrpc.SendMessageOperation(reply, _NO_FLAGS))
        self._sent_code = _status_code(code)
        batch.append(cygrpc.SendStatusFromServerOperation(trailers, code, details, _NO_FLAGS))
        self.call.start_server_batch(batch, _ignore)

    def _reply_headers(self, upstream: Metadata | None) -> Metadata:
        if self._method is None or self._method.route is None:
            return upstream or ()  # the gateway's own services: their headers as they are
        return (*(upstream or ()), *self._headers, (REQUEST_ID_HEADER, self._record.request_id))

    def _failure(self, headers: Metadata, code: int, details: str, trailers: Metadata) -> tuple[Any, ...]:
        """A failed upstream call as the caller sees it: unchanged, except a connection failure."""
        route = self._method.route if self._method is not None else None
        if route is not None:
            message = unavailable_message(route, _status_code(code), details, trailers)
            if message is not None:
                return self._reply_headers(None), code, message, ()
        return headers, code, details, trailers

    # Streams: requests up and replies down, one message at a time each way.

    def _on_request_sent(self, event: Any) -> None:
        if event.success:
            self.call.start_server_batch((cygrpc.ReceiveMessageOperation(_NO_FLAGS),), self._on_request)

    def _on_request(self, event: Any) -> None:
        if not event.success:
            return
        message = event.batch_operations[0].message()
        if message is None:
            self._method_channel().operate(
                self._upstream, (cygrpc.SendCloseFromClientOperation(_NO_FLAGS),), _ignore
            )
        else:
            self._method_channel().operate(
                self._upstream, (cygrpc.SendMessageOperation(message, _NO_FLAGS),), self._on_request_sent
            )

    # Replies down, read ahead: while one is being sent to the caller the next are read from the
    # upstream, up to READ_AHEAD_BYTES, so that neither side waits for the other and each thread
    # handles runs of completions instead of waking the other for every message.

    def _on_reply_headers(self, event: Any) -> None:
        headers = self._reply_headers(event.batch_operations[0].initial_metadata())
        with self._lock:
            self._sending = True
            read = self._may_read()
        self.call.start_server_batch(
            (cygrpc.SendInitialMetadataOperation(headers, _NO_FLAGS),), self._on_reply_sent
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
        reading = self._method_channel().operate(
            self._upstream, (cygrpc.ReceiveMessageOperation(_NO_FLAGS),), self._on_streamed_reply
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
                if self._sending:
                    self._waiting.append(message)
                    self._waiting_bytes += len(message)
                else:
                    self._sending = send_now = True
                read = self._may_read()
        self._go_on(message if send_now else None, read, finish)

    def _on_reply_sent(self, event: Any) -> None:
        if not event.success:
            return  # the caller is gone; _on_close cancels the upstream call
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
            self.call.start_server_batch(
                (cygrpc.SendMessageOperation(message, _NO_FLAGS),), self._on_reply_sent
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
        if code != _OK:
            _, code, details, trailers = self._failure((), code, details, trailers)
        self._sent_code = _status_code(code)
        self.call.start_server_batch(
            (cygrpc.SendStatusFromServerOperation(trailers, code, details, _NO_FLAGS),), _ignore
        )

    # The end.

    def _refuse(self, code: grpc.StatusCode, message: str, trailers: Metadata = ()) -> None:
        """End the call with the gateway's own status; like every reply, it carries the request id."""
        self._sent_code = code
        self.call.start_server_batch(
            (
                cygrpc.SendInitialMetadataOperation(
                    ((REQUEST_ID_HEADER, self._record.request_id),), _NO_FLAGS
                ),
                cygrpc.SendStatusFromServerOperation(
                    trailers, STATUS_CODE_TO_CYGRPC_STATUS_CODE[code], message, _NO_FLAGS
                ),
            ),
            _ignore,
        )

    def _on_close(self, event: Any) -> None:
        """The call is over: sent its status, or was cancelled (by the caller, or its deadline)."""
        cancelled = bool(event.batch_operations[0].cancelled())
        if cancelled:
            self._caller_done = True
            upstream = self._upstream
            if upstream is not None:
                upstream.cancel(cygrpc.StatusCode.cancelled, "the caller cancelled")
        self._observer.ended(
            _CANCELLED if cancelled else self._sent_code,
            self._started,
            self.peer,
            self._client,
            self._record,
            None if self._method is not None else method_part(self._path, None),
        )


def _ignore(event: Any) -> None:
    """For completions that need no next step."""


def open_channels(
    routes: Sequence[Route], keepalive: UpstreamKeepalive, transports: dict[str, UpstreamTransport]
) -> dict[str, UpstreamChannel]:
    """One channel per upstream, set up as the aio path's (gateway/channels.py, gateway/tls.py)."""
    routes_of: dict[str, list[Route]] = {}
    for route in routes:
        routes_of.setdefault(route.upstream, []).append(route)
    opened = {}
    for upstream, shared in routes_of.items():
        options: list[tuple[str, Any]] = list(channels.channel_options(shared, keepalive))
        transport = transports.get(upstream)
        credentials = None
        if transport is not None:
            options.extend(transport.options)
            credentials = transport.credentials._credentials
        opened[upstream] = UpstreamChannel(
            upstream, channels.target(shared[0].upstreams), options, credentials
        )
    return opened
