"""The HTTP doors' unary calls upstream: grpc.aio on the event loop the doors already run on.

On the core engine the doors once used the engine's cygrpc channels instead, whose completions
arrive on a channel thread and are handed to the event loop. Alternating runs of the two here
(h2load --h1 -c4, GetUser as JSON, gateway CPU from /proc) were within the machine's noise of each
other, twice (648-777 µs against 698-920 µs per request; later 399-421 against 340-410): the loop
gets cheaper, the channel's thread costs as much. So the doors keep their own grpc.aio channels on
either engine and need nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from gateway.call.step import Metadata


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


def unary_call(caller: Any, request: bytes, metadata: Metadata, seconds: float | None) -> Any:
    """``request`` through ``caller`` (a grpc.aio unary multicallable of raw bytes), within ``seconds``
    (None: no deadline): the call, under way; cancelling it cancels the upstream call."""
    return caller(request, metadata=metadata, timeout=seconds)


async def answer_of(call: Any) -> UnaryReply:
    """What the upstream answered ``call`` (of ``unary_call``), failures included."""
    try:
        reply: bytes = await call
    except grpc.aio.AioRpcError as error:
        return failed(error)
    initial = tuple(await call.initial_metadata() or ())
    return UnaryReply(grpc.StatusCode.OK, "", reply, initial, tuple(await call.trailing_metadata() or ()))
