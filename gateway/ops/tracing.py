"""OpenTelemetry spans of the calls through the gateway, exported over OTLP by the SDK's batch processor.

Each call is a server span, continuing the caller's W3C ``traceparent`` (and ``tracestate``) or
starting a trace; a call sent upstream has a client span under it, and the upstream receives that
span's ``traceparent`` in place of the caller's, so its own spans are children of the gateway's.
A call the gateway refuses is one server span with the reason. Spans are made from what the
observer already knows at the call's start, its forwarding and its end, so a door does nothing for
them; with tracing off no observer has a tracer and a call pays one ``is None`` test.

A call's spans are not the SDK's live spans: those take a lock and check every attribute each time
one is set, which cost a sampled call about 80 µs of CPU here. The ids, the sampling decision (the
SDK's parent-based sampler) and the propagation (the SDK's W3C propagator) are decided as the call
goes upstream; the two spans are made once, finished, as the SDK's ``ReadableSpan`` records when
the call ends, and handed to the SDK's batch processor and OTLP exporter as its own spans are. The
attributes are the gateway's own strings and numbers, so there is nothing to check.

Exports run on the SDK's worker thread: a collector that is down or slow never holds up a call.
A failed export drops its spans, counted in ``grpc_gateway_trace_spans_dropped_total`` and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
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


def _wall_ns(started: float) -> int:
    """The wall-clock time, in ns, of the perf_counter() reading ``started``."""
    return time.time_ns() - int((time.perf_counter() - started) * 1e9)


@dataclass(frozen=True)
class _Trace:
    """A call's place in its trace, decided as it goes upstream (or is refused)."""

    parent: SpanContext | None  # the caller's span, when it sent one
    server: SpanContext
    client: SpanContext
    sampled: bool


@dataclass(frozen=True)
class _Forwarded:
    """A call gone upstream: its place in the trace, the upstream's attributes, when it went."""

    place: _Trace
    upstream: Attributes
    started: int  # wall clock, ns: the client span's start


_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


class Tracer:
    """Spans of the gateway's calls, for the observers; one per process."""

    def __init__(self, config: TracingConfig, dropped: Callable[[int], None]) -> None:
        # The exporter logs every failed export (and each retry) itself: _Exporter says it once in
        # FAILURE_LOG_SECONDS, with the count.
        logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
        self._resource = Resource.create({"service.name": config.service_name})
        self._scope = InstrumentationScope("grpc-gateway")
        self._sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._ids = RandomIdGenerator()
        drops, waiting = _Drops(dropped, config.endpoint), _Waiting()
        batches = BatchSpanProcessor(
            _Exporter(_otlp_exporter(config), drops, waiting),
            max_queue_size=config.max_queued_spans,
            max_export_batch_size=min(512, config.max_queued_spans),
            schedule_delay_millis=config.export_delay * 1000,
            export_timeout_millis=config.export_timeout * 1000,
        )
        self._processor = _Bounded(batches, drops, waiting, config.max_queued_spans)

    @staticmethod
    def upstream_attributes(upstream: str) -> Attributes:
        """The client span's attributes for calls to ``upstream`` (an address, or several)."""
        try:
            host, port = parse_host_port(upstream)
        except ValueError:
            return {"rpc.system": "grpc", "server.address": upstream}
        return {"rpc.system": "grpc", "server.address": host, "server.port": port}

    def _trace(self, call: Call) -> _Trace:
        carrier = {key: value for key, value in call.metadata if key in TRACE_HEADERS}
        context = _PROPAGATOR.extract(carrier) if carrier else None
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent, trace_id = None, self._ids.generate_trace_id()
        else:
            trace_id = parent.trace_id
        decided = self._sampler.should_sample(context, trace_id, call.method[1:], SpanKind.SERVER)
        sampled = decided.decision is Decision.RECORD_AND_SAMPLE
        flags, state = (_SAMPLED if sampled else _NOT_SAMPLED), decided.trace_state
        ids = self._ids
        server = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        client = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        return _Trace(parent, server, client, sampled)

    def forwarding(self, call: Call, upstream: Attributes, metadata: Metadata) -> Metadata:
        """Where the call's spans sit in its trace; ``metadata`` with the client span's trace
        context in place of the caller's. ``upstream``: :meth:`upstream_attributes`."""
        place = self._trace(call)
        call.trace = _Forwarded(place, upstream, time.time_ns())
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(place.client)))
        kept = tuple((key, value) for key, value in metadata if key not in TRACE_HEADERS)
        return (*kept, *carrier.items())

    def ended(self, call: Call, code: grpc.StatusCode, started: float, reason: str | None) -> None:
        """The call's spans, finished, to the exporter (when sampled)."""
        forwarded: _Forwarded | None = call.trace
        place = self._trace(call) if forwarded is None else forwarded.place
        if not place.sampled:
            return
        ended = time.time_ns()
        status_code = code.value[0]
        failed = code is not grpc.StatusCode.OK
        name = call.method[1:]
        service, _, method = name.partition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "rpc.grpc.status_code": status_code,
            "gateway.door": call.door,
            "gateway.request_id": call.request_id,
        }
        if call.client is not None:
            attributes["gateway.client"] = call.client
        if call.rate_limit is not None:
            attributes["gateway.rate_limit"] = call.rate_limit
        if reason is not None:
            attributes["gateway.refused"] = reason
        if forwarded is not None:
            self._processor.on_end(
                self._span(
                    name,
                    place.client,
                    place.server,
                    SpanKind.CLIENT,
                    {**(forwarded.upstream or {}), "rpc.grpc.status_code": status_code},
                    Status(StatusCode.ERROR, code.name) if failed else _UNSET,
                    forwarded.started,
                    ended,
                )
            )
        status = Status(StatusCode.ERROR, reason or code.name) if failed else _UNSET
        server = self._span(
            name, place.server, place.parent, SpanKind.SERVER, attributes, status, _wall_ns(started), ended
        )
        self._processor.on_end(server)

    def _span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
        status: Status,
        started: int,
        ended: int,
    ) -> ReadableSpan:
        return ReadableSpan(
            name=name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=kind,
            status=status,
            start_time=started,
            end_time=ended,
            instrumentation_scope=self._scope,
        )

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout), then stop the worker."""
        self._processor.shutdown()
