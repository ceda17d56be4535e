"""The metrics Python and Go gRPC dashboards are built on: go-grpc-prometheus's names and labels.

``grpc_server_*`` count the calls the gateway answers (from every door), ``grpc_client_*`` the
calls it makes to upstreams, each by ``grpc_type``, ``grpc_service`` and ``grpc_method`` (and
``grpc_code`` once handled), as go-grpc-prometheus and py-grpc-prometheus name them. ``grpc_code``
is spelt as go-grpc-prometheus spells it (Go's ``codes.Code`` names: ``ResourceExhausted``, not
``RESOURCE_EXHAUSTED``), since the dashboards and alert rules written for these names match those
values. Method labels exist only for the methods the gateway answers; every other path is the one
``unknown`` series, so a caller cannot create series by inventing names.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

# go-grpc-prometheus's values of grpc_type.
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"
# Labels of every call to a path the gateway does not answer.
UNKNOWN = "unknown"

# grpc_code as go-grpc-prometheus writes it: Go's codes.Code.String().
GRPC_CODES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return BIDI_STREAM if server_streaming else CLIENT_STREAM
    return SERVER_STREAM if server_streaming else UNARY


class _Side:
    """One side's families: ``grpc_server_*`` or ``grpc_client_*``."""

    def __init__(self, side: str, what: str, registry: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(f"grpc_{side}_started", f"{what} started.", labels, registry=registry)
        self.handled = Counter(
            f"grpc_{side}_handled",
            f"{what} completed, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.received = Counter(
            f"grpc_{side}_msg_received", f"Messages received by {what.lower()}.", labels, registry=registry
        )
        self.sent = Counter(
            f"grpc_{side}_msg_sent", f"Messages sent by {what.lower()}.", labels, registry=registry
        )
        self.handling = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Time {what.lower()} took, from start to status.",
            labels,
            buckets=buckets,
            registry=registry,
        )


class GrpcMetrics:
    """Both sides' families, in the gateway's registry."""

    def __init__(self, registry: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        self.server = _Side("server", "Calls the gateway answers (every door)", registry, buckets)
        self.client = _Side("client", "Calls from the gateway to upstreams", registry, buckets)


class SideSeries:
    """One method's series on one side, bound once; codes bound at their first use."""

    __slots__ = ("_by_code", "_handled", "_labels", "handling", "received", "sent", "started")

    def __init__(self, side: _Side, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._handled = side.handled
        self.started = side.started.labels(*labels)
        self.received = side.received.labels(*labels)
        self.sent = side.sent.labels(*labels)
        self.handling = side.handling.labels(*labels)
        self._by_code: dict[grpc.StatusCode, Counter] = {}

    def handled(self, code: grpc.StatusCode, seconds: float, received: int, sent: int) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._handled.labels(*self._labels, GRPC_CODES[code])
        counter.inc()
        self.handling.observe(seconds)
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)
