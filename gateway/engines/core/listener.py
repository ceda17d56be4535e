"""The core engine's listener: one thread takes calls off the server's completion queue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._cython import cygrpc

from gateway.engines.base import TICK_SECONDS
from gateway.engines.core.call import CoreCall
from gateway.engines.core.carrying import Carrying
from gateway.engines.core.channel import handle
from runtime.serving import cannot_listen

log = logging.getLogger("gateway.core")

# The grpcio release the core engine is tested on (pyproject.toml pins the same): cygrpc is private.
TESTED_GRPCIO = "1.85."


class CoreListener:
    """Takes calls from its completion queue and runs them by ``carrying``; ticks every TICK_SECONDS."""

    def __init__(
        self,
        carrying: Carrying,
        tick: Callable[[], None],
        address: str,
        credentials: grpc.ServerCredentials | None,
        options: Sequence[Any],
    ) -> None:
        if not grpc.__version__.startswith(TESTED_GRPCIO):
            log.warning(
                'the core engine is tested with another grpcio; if calls misbehave, set engine = "aio"',
                extra={"grpcio": grpc.__version__, "tested": f"{TESTED_GRPCIO}x"},
            )
        self.carrying = carrying
        self._tick = tick
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
                handle(event)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._tick()
        self._server.destroy()

    def _new_call(self, event: Any) -> None:
        if not self._stopping:
            self._server.request_call(self._queue, self._queue, self._new_call)
        if event.success and event.call is not None:
            CoreCall(self.carrying, event).begin()
