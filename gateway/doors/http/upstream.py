"""The HTTP doors' unary calls upstream: grpc.aio on the event loop the doors already run on.

Measured on the core engine (h2load --h1 -c4, GetUser as JSON): a unary call on the engine's
cygrpc channel, whose completion arrives on the channel's thread and is handed to the event loop,
cost the gateway about 640 µs of CPU per request; the same call on grpc.aio, which stays on the
loop, about 470 µs. So the HTTP doors call upstreams on their own grpc.aio channels on either engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from gateway.call.step import Metadata
from gateway.routing.health import Upstreams
from gateway.routing.table import MethodRoute


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


class AioUnaryCalls:
    """Unary calls on one plan's grpc.aio channels, raw bytes both ways."""

    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams
        self._callers: dict[str, Any] = {}

    async def unary(
        self, route: MethodRoute, metadata: Metadata, request: bytes, seconds: float | None
    ) -> UnaryReply:
        caller = self._callers.get(route.path)
        if caller is None:
            channel = self._upstreams.channel(route.upstream)
            caller = channel.unary_unary(route.path, request_serializer=None, response_deserializer=None)
            self._callers[route.path] = caller
        call = caller(request, metadata=metadata, timeout=seconds)
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as error:
            return failed(error)
        finally:
            if not call.done():
                call.cancel()
        initial = tuple(await call.initial_metadata() or ())
        return UnaryReply(grpc.StatusCode.OK, "", reply, initial, tuple(await call.trailing_metadata() or ()))
