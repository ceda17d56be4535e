"""Which metadata crosses the gateway: what is forwarded, stripped or added, and what cannot be forwarded.

gRPC's HTTP/2 layer accepts header values that its own client then refuses to send: bytes outside
visible ASCII in a text (non ``-bin``) header, such as UTF-8 or control characters. Forwarded as
they are, such a call would fail inside grpc and leave the caller waiting with no status at all.
So the chain's first step refuses them, naming the header. One pass of two C-speed string tests
per header; ``-bin`` headers carry bytes and are never checked.
"""

from __future__ import annotations

import grpc

from gateway.call.requestid import HEADER as REQUEST_ID_HEADER
from gateway.call.step import Call, Metadata, Refusal

API_KEY_HEADER = "x-api-key"
CLIENT_ID_HEADER = "x-client-id"

# Never forwarded: the caller's credentials, a client id the caller may have forged, and
# headers that describe this hop's connection rather than the call. (x-request-id is added
# back: the caller's, or the one the gateway made up.)
_NOT_FORWARDED = frozenset(
    {
        API_KEY_HEADER,
        CLIENT_ID_HEADER,
        REQUEST_ID_HEADER,
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
        "user-agent",
        "content-type",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
    }
)


# The gateway's own: claims of a verified token (x-jwt-<claim>), which a caller must not forge.
_NOT_FORWARDED_PREFIXES = (":", "x-jwt-")


def forwarded(call: Call) -> Metadata:
    """The caller's metadata as the upstream should see it, with what the chain added."""
    kept = tuple(
        (key, value)
        for key, value in call.metadata
        if key not in _NOT_FORWARDED and not key.startswith(_NOT_FORWARDED_PREFIXES)
    )
    withheld = call.withheld  # the token that authenticated the call, unless it is to be forwarded
    if withheld:
        kept = tuple((key, value) for key, value in kept if key not in withheld)
    return (
        *kept,
        *call.to_upstream,
        (CLIENT_ID_HEADER, call.client or ""),
        (REQUEST_ID_HEADER, call.request_id),
    )


def unforwardable_header(metadata: Metadata) -> str | None:
    """The name of the first text header whose value is not visible ASCII, or None."""
    for name, value in metadata:
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            return name
    return None


def unforwardable_message(name: str) -> str:
    """The refusal of a call whose header ``name`` cannot be forwarded (INVALID_ARGUMENT)."""
    # The value is not echoed: it may be a credential, and it is unprintable anyway.
    return f"metadata {name} has a value that is not printable ASCII; send binary values in a -bin header"


class MetadataCheck:
    """The chain's ``metadata`` step: INVALID_ARGUMENT for a text header gRPC cannot carry on."""

    name = "metadata"

    def check(self, call: Call) -> Refusal | None:
        header = unforwardable_header(call.metadata)
        if header is None:
            return None
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, unforwardable_message(header))
