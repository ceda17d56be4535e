"""A client-streaming upstream call made on grpc's blocking API, in a thread of its own, seen from
the event loop as a grpc.aio call (``await``, ``async for``, metadata, ``cancel``).

Why: when an upstream ends a call while grpc.aio's client is still sending requests, grpc.aio
often reports INTERNAL "Internal error from Core" instead of the upstream's status (grpc issue
36066), on bidi and client-streaming calls alike; grpc's blocking API reports the upstream's status.
So every door and engine that forwards client streams on grpc.aio's API sends them this way
instead: the requests (a list, or the caller's live stream) go out from the thread, the replies come
back to the loop. ``tests/gateway/test_forwarding.py``
(``test_an_upstream_ending_a_client_stream_early_keeps_its_status``) sends such calls through the
gateway and checks that every one keeps the upstream's status.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterator
from typing import Any

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]

_END = object()


def _aio_error(error: grpc.RpcError) -> grpc.aio.AioRpcError:
    """The blocking API's error as grpc.aio's, so one ``except`` handles both."""
    return grpc.aio.AioRpcError(
        error.code(),
        grpc.aio.Metadata(*(error.initial_metadata() or ())),
        grpc.aio.Metadata(*(error.trailing_metadata() or ())),
        error.details(),
    )


async def _hand_over(requests: AsyncIterable[bytes], handed: queue.Queue[Any]) -> None:
    """The caller's requests, as they arrive, to the thread that sends them; then the end."""
    try:
        async for request in requests:
            handed.put(request)
    finally:
        handed.put(_END)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ThreadedStreamCall:
    """Start at once; replies (one, or a stream) come back to the loop as they arrive."""

    def __init__(
        self,
        multicallable: Any,
        requests: list[bytes] | AsyncIterable[bytes],
        timeout: float | None,
        metadata: Metadata,
        streams_replies: bool,
    ) -> None:
        """``requests``: all of them, or the caller's stream, read on the loop as the thread sends."""
        self._loop = asyncio.get_running_loop()
        self._pump: asyncio.Task[None] | None = None
        outgoing: Iterator[bytes]
        if isinstance(requests, list):
            outgoing = iter(requests)
        else:
            handed: queue.Queue[Any] = queue.Queue()
            self._pump = asyncio.ensure_future(_hand_over(requests, handed))
            outgoing = iter(handed.get, _END)
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._initial: asyncio.Future[Metadata] = self._loop.create_future()
        self._end: asyncio.Future[tuple[bytes | None, Metadata]] = self._loop.create_future()
        for future in (self._initial, self._end):
            # A caller may never ask for one of them (the headers of a failed call, say).
            future.add_done_callback(_retrieved)
        self._call: Any = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        arguments = (multicallable, outgoing, timeout, metadata, streams_replies)
        threading.Thread(target=self._run, args=arguments, name="http-stream-call", daemon=True).start()

    def _post(
        self, future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        self._loop.call_soon_threadsafe(settle)

    def _run(
        self,
        multicallable: Any,
        requests: list[bytes],
        timeout: float | None,
        metadata: Metadata,
        streams: bool,
    ) -> None:
        try:
            if streams:
                call = multicallable(iter(requests), timeout=timeout, metadata=metadata)
            else:
                call = multicallable.future(iter(requests), timeout=timeout, metadata=metadata)
            with self._lock:
                self._call = call
                if self._cancelled.is_set():
                    call.cancel()
            if streams:
                self._post(self._initial, tuple(call.initial_metadata() or ()))
                for reply in call:
                    self._loop.call_soon_threadsafe(self._replies.put_nowait, reply)
                self._post(self._end, (None, tuple(call.trailing_metadata() or ())))
            else:
                reply = call.result()
                self._post(self._initial, tuple(call.initial_metadata() or ()))
                self._post(self._end, (reply, tuple(call.trailing_metadata() or ())))
        except grpc.RpcError as error:
            failure = _aio_error(error)
            self._post(self._initial, error=failure)
            self._post(self._end, error=failure)
        finally:
            self._loop.call_soon_threadsafe(self._replies.put_nowait, _END)
            if self._pump is not None:  # the call is over: stop reading the caller's requests
                self._loop.call_soon_threadsafe(self._pump.cancel)

    async def initial_metadata(self) -> Metadata:
        return await asyncio.shield(self._initial)

    async def trailing_metadata(self) -> Metadata:
        return (await asyncio.shield(self._end))[1]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while (reply := await self._replies.get()) is not _END:
            yield reply
        await asyncio.shield(self._end)  # raises the call's error, if it failed

    def __await__(self) -> Generator[Any, None, bytes | None]:
        reply, _ = yield from asyncio.shield(self._end).__await__()
        return reply

    def done(self) -> bool:
        return self._end.done()

    def cancel(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._cancelled.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
