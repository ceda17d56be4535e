"""A unary call to an upstream as any door can make it, over the channels of whichever engine runs.

The gRPC door forwards on its engine's own channels; a door of another protocol (HTTP/JSON) asks
the engine for this instead, so its unary calls cost what the engine's do (on the core engine, one
batch on a cygrpc channel) and it never needs to know which engine that is.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import grpc

from gateway.call.step import Metadata
from gateway.routing.table import MethodRoute


@dataclass(frozen=True)
class UnaryReply:
    """What the upstream answered: its status, its reply (None unless OK), its metadata."""

    code: grpc.StatusCode
    details: str
    reply: bytes | None
    initial: Metadata
    trailers: Metadata


class UnaryUpstream(Protocol):
    def unary(
        self, route: MethodRoute, metadata: Metadata, request: bytes, seconds: float | None
    ) -> Awaitable[UnaryReply]:
        """Call ``route``'s unary method with ``request``, within ``seconds`` (None: no deadline);
        cancelling the awaitable cancels the call."""
        ...
