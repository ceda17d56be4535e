"""The HTTP doors' unary calls upstream: on grpc.aio's channels, through the channel's own call.

grpc.aio's ``UnaryUnaryCall`` runs each call in a task of its own and wraps it in interceptor,
serializer and census machinery, then answers three awaits (the reply, its metadata, its status).
The doors make the request's bytes themselves and read the answer whole, so they await the
channel's cygrpc call and its one batch directly: 181 against 211 µs of CPU per call, 4 calls at
once on uvloop, interleaved rounds of 20,000 (``GetUser``, the process's every thread). The call
is the one grpc.aio's own ``UnaryUnaryCall`` makes (``Channel._channel.call``), on the same channel,
so options, TLS, keepalive and reconnection are the channel's; grpcio is pinned to the minor
release this is tested on (pyproject.toml), as the core engine already needs.

On the core engine the doors once used the engine's cygrpc channels instead, whose completions
arrive on a channel thread and are handed to the event loop: no cheaper than grpc.aio (232-212
against 215-203 µs in the same measurement), since the hand-over costs what the loop saves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE

from gateway.call.step import Metadata

_OK = grpc.StatusCode.OK
_LEFT = "the caller went away"


@dataclass(frozen=True)
class UnaryReply:
    """What the upstream answered: its status, its reply (None unless OK), its metadata."""

    code: grpc.StatusCode
    details: str
    reply: bytes | None
    initial: Metadata
    trailers: Metadata


def failed(error: grpc.aio.AioRpcError) -> UnaryReply:
    """A failed call's answer."""
    initial = tuple(error.initial_metadata() or ())
    return UnaryReply(
        error.code(), error.details() or "", None, initial, tuple(error.trailing_metadata() or ())
    )


class UnaryCall:
    """``request`` to ``method`` on ``channel`` (a grpc.aio channel), within ``seconds`` (None: no
    deadline), raw bytes both ways. The call starts when ``answer`` is awaited; cancelling it, or
    the task awaiting it, cancels the upstream call."""

    __slots__ = ("_call", "_metadata", "_request")

    def __init__(
        self,
        channel: grpc.aio.Channel,
        method: str,
        request: bytes,
        metadata: Metadata,
        seconds: float | None,
    ) -> None:
        deadline = None if seconds is None else time.time() + seconds
        # (method, deadline, call credentials, wait_for_ready, registered method handle), as grpc.aio's
        # own unary calls make it.
        self._call: Any = channel._channel.call(method.encode(), deadline, None, None, 0)
        self._request = request
        self._metadata = metadata

    async def answer(self) -> UnaryReply:
        """What the upstream answered, failures included."""
        call = self._call
        try:
            reply: bytes | None = await call.unary_unary(self._request, self._metadata)
        except asyncio.CancelledError:
            self.cancel()
            raise
        status = await call.status()
        code = CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(status.code(), grpc.StatusCode.UNKNOWN)
        initial = tuple(await call.initial_metadata() or ())
        trailers = tuple(status.trailing_metadata() or ())
        return UnaryReply(code, status.details() or "", reply if code is _OK else None, initial, trailers)

    def done(self) -> bool:
        done: bool = self._call.done()
        return done

    def cancel(self) -> None:
        if not self._call.done():
            self._call.cancel(_LEFT)
