"""Refuses calls whose metadata the gateway could not forward: the first thing every call meets.

gRPC's HTTP/2 layer accepts header values that its own client then refuses to send: bytes outside
visible ASCII in a text (non ``-bin``) header, such as UTF-8 or control characters. Forwarded as
they are, such a call would fail inside grpc and leave the caller waiting with no status at all.
Refused here, the caller learns which header is wrong. One pass of two C-speed string tests per
header; ``-bin`` headers carry bytes and are never checked.
"""

from __future__ import annotations

import grpc

from gateway.callstate import Continuation
from gateway.rejections import rejection


def unforwardable_header(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The name of the first text header whose value is not visible ASCII, or None."""
    for name, value in metadata or ():
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            return name
    return None


def unforwardable_message(name: str) -> str:
    """The refusal of a call whose header ``name`` cannot be forwarded (INVALID_ARGUMENT)."""
    # The value is not echoed: it may be a credential, and it is unprintable anyway.
    return f"metadata {name} has a value that is not printable ASCII; send binary values in a -bin header"


class MetadataCheckInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a call with a text header gRPC cannot carry on to an upstream."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        name = unforwardable_header(handler_call_details.invocation_metadata)
        if name is None:
            return await continuation(handler_call_details)
        return rejection(grpc.StatusCode.INVALID_ARGUMENT, unforwardable_message(name))
