"""The HTTP doors' unary calls upstream, on grpc.aio's public API.

The doors make the request's bytes themselves and read the answer whole: a call is the channel's
``unary_unary`` multicallable with no serializers (raw bytes both ways), awaited once, its
metadata and status read from the finished call, so options, TLS, keepalive and reconnection are
the channel's. ``python -m bench.door_cost`` measures its cost per call (the upstream call alone, as
the door makes it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.call.step import Metadata

_OK = grpc.StatusCode.OK


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
    deadline), raw bytes both ways. The call is made at once and goes out on the event loop's next
    turn; ``answer`` awaits it. Cancelling it, or the task awaiting ``answer``, cancels the upstream
    call."""

    __slots__ = ("_call",)

    def __init__(
        self,
        channel: grpc.aio.Channel,
        method: str,
        request: bytes,
        metadata: Metadata,
        seconds: float | None,
    ) -> None:
        multicallable = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        self._call: Any = multicallable(request, timeout=seconds, metadata=metadata)

    async def answer(self) -> UnaryReply:
        """What the upstream answered, failures included.

        Raises:
            asyncio.CancelledError: the call was cancelled (by :meth:`cancel`, or the awaiting task).
        """
        call = self._call
        try:
            reply: bytes | None = await call
        except grpc.aio.AioRpcError as error:
            return failed(error)
        except asyncio.CancelledError:
            self.cancel()
            raise
        initial = tuple(await call.initial_metadata() or ())
        trailers = tuple(await call.trailing_metadata() or ())
        return UnaryReply(_OK, await call.details() or "", reply, initial, trailers)

    def done(self) -> bool:
        done: bool = self._call.done()
        return done

    def cancel(self) -> None:
        if not self._call.done():
            self._call.cancel()
