"""OpenTelemetry spans of the calls through the gateway, exported over OTLP by the SDK's batch processor.

Each call is a server span, continuing the caller's W3C ``traceparent`` (and ``tracestate``) or
starting a trace; a call sent upstream has a client span under it, and the upstream receives that
span's ``traceparent`` in place of the caller's, so its own spans are children of the gateway's.
A call the gateway refuses is one server span with the reason. Spans are made from what the
observer already knows at the call's start, its forwarding and its end, so a door does nothing for
them; with tracing off no observer has a tracer and a call pays one ``is None`` test.

Exports run on the SDK's worker thread: a collector that is down or slow never holds up a call.
A failed export drops its spans, counted in ``grpc_gateway_trace_spans_dropped_total`` and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from gateway.call.step import Call, Metadata
from gateway.config.schema import Tracing as TracingConfig
from runtime.addresses import parse_host_port

log = logging.getLogger("gateway.tracing")

TRACE_HEADERS = ("traceparent", "tracestate")
# A collector that stays down is logged at most this often.
FAILURE_LOG_SECONDS = 30.0

_PROPAGATOR = TraceContextTextMapPropagator()


class _Drops:
    """Spans dropped: counted in the metric, and logged at most once in FAILURE_LOG_SECONDS."""

    def __init__(self, counted: Callable[[int], None], endpoint: str) -> None:
        self._counted = counted
        self._endpoint = endpoint
        self._last_logged = -FAILURE_LOG_SECONDS
        self._unlogged = 0

    def __call__(self, spans: int, why: str) -> None:
        self._counted(spans)
        self._unlogged += spans
        now = time.monotonic()
        if now - self._last_logged >= FAILURE_LOG_SECONDS:
            log.warning(
                "trace collector %s: %d spans dropped since the last report (%s)",
                self._endpoint,
                self._unlogged,
                why,
            )
            self._last_logged, self._unlogged = now, 0


class _Waiting:
    """Spans handed to the batch processor and not yet through an export (approximate: no lock)."""

    def __init__(self) -> None:
        self.spans = 0


class _Exporter(SpanExporter):
    """The OTLP exporter, its failures counted and logged instead of raised or retried forever."""

    def __init__(self, exporter: SpanExporter, drops: _Drops, waiting: _Waiting) -> None:
        self._exporter = exporter
        self._drops = drops
        self._waiting = waiting

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:  # the SDK logs and forgets a raising exporter; count it as a failure
            result = SpanExportResult.FAILURE
        self._waiting.spans = max(0, self._waiting.spans - len(spans))
        if result is SpanExportResult.FAILURE:
            self._drops(len(spans), "the collector did not take them")
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _Bounded(SpanProcessor):
    """The batch processor, with a full queue's drops counted here: the SDK would log a line for
    each span it drops, on the call's own thread."""

    def __init__(self, processor: SpanProcessor, drops: _Drops, waiting: _Waiting, most: int) -> None:
        self._processor = processor
        self._drops = drops
        self._waiting = waiting
        self._most = most

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self._processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self._waiting.spans >= self._most:
            self._drops(1, f"{self._most} spans were waiting for the collector")
            return
        self._waiting.spans += 1
        self._processor.on_end(span)

    def shutdown(self) -> None:
        self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._processor.force_flush(timeout_millis)


def _otlp_exporter(config: TracingConfig) -> SpanExporter:
    tls = config.tls
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        credentials = None
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(
                tls.ca.read_bytes() if tls.ca else None,
                tls.key.read_bytes() if tls.key else None,
                tls.cert.read_bytes() if tls.cert else None,
            )
        return OTLPSpanExporter(
            endpoint=config.endpoint,
            insecure=tls is None,
            credentials=credentials,
            headers=dict(config.headers),
            timeout=config.export_timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(
        endpoint=config.endpoint,
        certificate_file=str(tls.ca) if tls is not None and tls.ca else None,
        client_certificate_file=str(tls.cert) if tls is not None and tls.cert else None,
        client_key_file=str(tls.key) if tls is not None and tls.key else None,
        headers=dict(config.headers),
        timeout=config.export_timeout,
    )


def upstream_attributes(upstream: str) -> Attributes:
    """The client span's attributes for calls to ``upstream`` (an address, or several)."""
    try:
        host, port = parse_host_port(upstream)
    except ValueError:
        return {"rpc.system": "grpc", "server.address": upstream}
    return {"rpc.system": "grpc", "server.address": host, "server.port": port}


def _wall_ns(started: float) -> int:
    """The wall-clock time, in ns, of the perf_counter() reading ``started``."""
    return time.time_ns() - int((time.perf_counter() - started) * 1e9)


class Tracer:
    """Spans of the gateway's calls, for the observers; one per process."""

    def __init__(self, config: TracingConfig, dropped: Callable[[int], None]) -> None:
        # The exporter logs every failed export (and each retry) itself: _Exporter says it once in
        # FAILURE_LOG_SECONDS, with the count.
        logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        drops, waiting = _Drops(dropped, config.endpoint), _Waiting()
        batches = BatchSpanProcessor(
            _Exporter(_otlp_exporter(config), drops, waiting),
            max_queue_size=config.max_queued_spans,
            max_export_batch_size=min(512, config.max_queued_spans),
            schedule_delay_millis=config.export_delay * 1000,
            export_timeout_millis=config.export_timeout * 1000,
        )
        self._provider.add_span_processor(_Bounded(batches, drops, waiting, config.max_queued_spans))
        self._tracer = self._provider.get_tracer("grpc-gateway")

    def _server_span(self, call: Call, started: float) -> Span:
        carrier = {key: value for key, value in call.metadata if key in TRACE_HEADERS}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        service, _, method = call.method[1:].partition("/")
        return self._tracer.start_span(
            call.method[1:],
            context=parent,
            kind=SpanKind.SERVER,
            start_time=_wall_ns(started),
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                "gateway.door": call.door,
                "gateway.request_id": call.request_id,
            },
        )

    def forwarding(self, call: Call, upstream: Attributes, metadata: Metadata) -> Metadata:
        """The server and client spans of a call going upstream; ``metadata`` with the client span's
        trace context in place of the caller's. ``upstream``: :func:`upstream_attributes`."""
        server = self._server_span(call, call.started)
        client = self._tracer.start_span(
            call.method[1:],
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes=upstream,
        )
        call.trace = (server, client)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(client))
        kept = tuple((key, value) for key, value in metadata if key not in TRACE_HEADERS)
        return (*kept, *carrier.items())

    def ended(self, call: Call, code: grpc.StatusCode, started: float, reason: str | None) -> None:
        spans = call.trace
        if spans is None:
            server, client = self._server_span(call, started), None
        else:
            server, client = spans
        status_code = code.value[0]
        if client is not None:
            client.set_attribute("rpc.grpc.status_code", status_code)
            if code is not grpc.StatusCode.OK:
                client.set_status(Status(StatusCode.ERROR, code.name))
            client.end()
        server.set_attribute("rpc.grpc.status_code", status_code)
        if call.client is not None:
            server.set_attribute("gateway.client", call.client)
        if call.rate_limit is not None:
            server.set_attribute("gateway.rate_limit", call.rate_limit)
        if reason is not None:
            server.set_attribute("gateway.refused", reason)
        if code is not grpc.StatusCode.OK:
            server.set_status(Status(StatusCode.ERROR, reason or code.name))
        server.end()

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout), then stop the worker."""
        self._provider.shutdown()
