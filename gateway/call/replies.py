"""What the gateway says back, the same on every engine: deadlines, reply headers, its own refusals."""

from __future__ import annotations

import grpc

from gateway.call.requestid import HEADER as REQUEST_ID_HEADER
from gateway.call.step import Call, Metadata, Refusal

# A caller's deadline longer than this (30 days) is as good as none: grpc's client overflows on
# deadlines of centuries (grpc-timeout 2562047H) and would fail the call at once.
MAX_UPSTREAM_TIMEOUT = 30 * 24 * 3600.0

# grpc core's own words when no connection to an upstream could be made.
_CONNECTION_FAILURES = (
    "failed to connect",
    "connections to all backends failing",
    "connection refused",
    "socket closed",
    "connection reset",
)

# google/rpc/code.proto's "HTTP Mapping" of each code.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

OUT_OF_TIME = Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call was forwarded")


def upstream_timeout(remaining: float | None, default: float | None) -> float | None:
    """Seconds the upstream call may take: the caller's ``remaining`` time, or the route's
    ``default`` timeout when the caller set no deadline (None: no limit)."""
    if remaining is None or remaining > MAX_UPSTREAM_TIMEOUT:
        return default
    return remaining


def reply_headers(upstream: Metadata | None, call: Call) -> Metadata:
    """A forwarded call's initial metadata: the upstream's, the chain's (``x-ratelimit-*``), the id."""
    return (*(upstream or ()), *call.reply_headers, (REQUEST_ID_HEADER, call.request_id))


def refusal_headers(call: Call) -> Metadata:
    """The initial metadata of a call the gateway refuses: like every reply, it carries the request id."""
    return ((REQUEST_ID_HEADER, call.request_id),)


def unavailable_message(
    upstream: str, service: str, code: grpc.StatusCode, details: str, trailers: Metadata | None
) -> str | None:
    """The gateway's words for a call that failed because no connection to the upstream could be
    made; None for any other failure, which is passed on as the upstream or grpc reported it."""
    if code != grpc.StatusCode.UNAVAILABLE or trailers:
        return None
    lowered = details.lower()
    if any(words in lowered for words in _CONNECTION_FAILURES):
        return f"upstream {upstream} for {service} is unavailable: {details}"
    return None


def incomplete_request(method: str) -> Refusal:
    """A unary call that ended before its request arrived whole."""
    name = method.rsplit("/", 1)[-1]
    return Refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the call ended without a whole request message; {name} takes exactly one",
    )
