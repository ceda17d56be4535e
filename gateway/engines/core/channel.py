"""Upstream channels of the core engine: one cygrpc channel and one thread per upstream."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE
from grpc._cython import cygrpc

from gateway.call.step import Metadata
from gateway.config.schema import Route, UpstreamKeepalive, UpstreamReconnect
from gateway.routing import channels
from gateway.routing.tls import UpstreamTransport

log = logging.getLogger("gateway.core")

NO_FLAGS = 0


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
                NO_FLAGS, method, None, deadline, metadata, None, batches, None, None
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
                handle(event)
                completed = 1
            elif event.completion_type == cygrpc.CompletionType.queue_shutdown:
                return

    def close(self) -> None:
        with self._work:
            self._closed = True
            self._work.notify()
        self._channel.close(cygrpc.StatusCode.unavailable, "the gateway closed this upstream channel")


def unary_operations(metadata: Metadata, request: bytes | None) -> tuple[Any, ...]:
    """A whole unary call as one client batch: metadata, the request, half-close, all three receives."""
    return (
        cygrpc.SendInitialMetadataOperation(metadata, NO_FLAGS),
        cygrpc.SendMessageOperation(request, NO_FLAGS),
        cygrpc.SendCloseFromClientOperation(NO_FLAGS),
        cygrpc.ReceiveInitialMetadataOperation(NO_FLAGS),
        cygrpc.ReceiveMessageOperation(NO_FLAGS),
        cygrpc.ReceiveStatusOnClientOperation(NO_FLAGS),
    )


def status_code(code: int) -> grpc.StatusCode:
    """grpc's status code for cygrpc's number."""
    return CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(code, grpc.StatusCode.UNKNOWN)


def handle(event: Any) -> None:
    """Run the step a completion was tagged with."""
    try:
        event.tag(event)
    except Exception:  # a bug in one call must not stop the thread that carries every call
        log.exception("core engine: a call step failed")


def ignore(event: Any) -> None:
    """For completions that need no next step."""


def open_channels(
    routes: Sequence[Route],
    keepalive: UpstreamKeepalive,
    reconnect: UpstreamReconnect,
    transports: dict[str, UpstreamTransport],
) -> dict[str, UpstreamChannel]:
    """One channel per upstream, set up as the aio engine's (gateway/routing/channels.py, tls.py)."""
    opened = {}
    for upstream, shared in channels.routes_by_upstream(routes).items():
        options: list[tuple[str, Any]] = list(channels.channel_options(shared, keepalive, reconnect))
        transport = transports.get(upstream)
        credentials = None
        if transport is not None:
            options.extend(transport.options)
            credentials = transport.credentials._credentials
        opened[upstream] = UpstreamChannel(
            upstream, channels.target(shared[0].upstreams), options, credentials
        )
    return opened
