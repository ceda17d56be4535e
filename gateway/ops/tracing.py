"""OpenTelemetry spans of the calls through the gateway, exported over OTLP by the SDK's batch processor.

Each call is a server span, continuing the caller's W3C ``traceparent`` (and ``tracestate``) or
starting a trace; a call sent upstream has a client span under it, and the upstream receives that
span's ``traceparent`` in place of the caller's, so its own spans are children of the gateway's.
A call the gateway refuses is one server span with the reason. Spans are made from what the
observer already knows at the call's start, its forwarding and its end, so a door does nothing for
them (the HTTP door leaves its request and route on the call, for the HTTP attributes); with
tracing off no observer has a tracer and a call pays one ``is None`` test.

The spans follow OpenTelemetry's semantic conventions for gRPC (``rpc.system.name``, the full
``rpc.method``, ``rpc.response.status_code``, ``error.type``, ``server.*`` on the client span, the
caller's address on the server span) and, for the HTTP door's server span, for HTTP servers
(``http.request.method``, ``http.route``, ``http.response.status_code``, ``url.*``), with their
rules for the span status: a gRPC server span is an error only for the codes that say the server
failed (SERVER_ERRORS), not for a refusal such as RESOURCE_EXHAUSTED; an HTTP server span only for
a 5xx; a client span for every code but OK.

A call's spans are not the SDK's live spans: those take a lock and check every attribute each time
one is set, several times the CPU of the rest of a sampled call's tracing. The ids, the sampling
decision (the SDK's samplers) and the propagation (the SDK's W3C propagator) are decided as the call
goes upstream; the two spans are made once, finished, as the SDK's ``ReadableSpan`` records when
the call ends, and handed to the SDK's batch processor and OTLP exporter as its own spans are. The
attributes are the gateway's own strings and numbers, so there is nothing to check, and what is
fixed per method (its name, the upstream's address) is made once per method (MethodSpans).

The standard OTEL_* variables configure what ``[tracing]`` leaves unset (Settings); a field the
table sets wins. Exports run on the SDK's worker thread: a collector that is down or slow never
holds up a call. A failed export drops its spans, counted in
``grpc_gateway_trace_spans_dropped_total`` and logged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from pydantic import ValidationError

from gateway.call.replies import HTTP_STATUS
from gateway.call.step import Call, Metadata
from gateway.config.schema import ConfigError
from gateway.config.schema import Tracing as TracingConfig
from runtime.addresses import parse_host_port

log = logging.getLogger("gateway.tracing")

TRACE_HEADERS = ("traceparent", "tracestate")
# A collector that stays down is logged at most this often.
FAILURE_LOG_SECONDS = 30.0

# The codes for which a gRPC server span is an error (OpenTelemetry's gRPC conventions): the
# others, the gateway's refusals among them, are answers the server meant to give.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# rpc.method of a path the gateway does not answer, and then the span's name (the conventions'
# {rpc.system.name}): a caller cannot make span names up; rpc.method_original keeps what it asked.
OTHER_METHOD = "_OTHER"
RPC_SYSTEM = "grpc"
# HTTP methods the conventions know; any other is "_OTHER", and its span is named "HTTP".
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
# Longest path (or method name a caller made up) kept in an attribute.
MAX_PATH = 200

# The standard variables read here, by what they set (gateway/ops/observe.py reads those that
# decide whether to trace at all: OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER and the endpoints).
ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
HEADERS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
SAMPLER, SAMPLER_ARG = "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"
SERVICE_NAME, RESOURCE_ATTRIBUTES = "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"
SCHEDULE_DELAY, MAX_QUEUE_SIZE = "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE"
DEFAULT_SERVICE_NAME = "grpc-gateway"
# Where spans go when neither [tracing] nor a variable says (the OTLP exporter specification's).
DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318/v1/traces"}

_PROPAGATOR = TraceContextTextMapPropagator()
_HEADER_NAME = re.compile(r"[0-9A-Za-z_.\-]+\Z")  # what gRPC metadata and HTTP headers both take
_NOT_IN_VALUE = frozenset('",;\\')  # the W3C baggage format the variables use has no such characters


def _variable(environ: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``names`` set, and its value; an empty value is unset (as the specification says)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def env_headers(variable: str, text: str) -> dict[str, str]:
    """The headers of OTEL_EXPORTER_OTLP_[TRACES_]HEADERS: ``name=value`` entries, comma-separated,
    values URL-encoded; read as the SDK's exporter reads them, names in lower case.

    Raises:
        ConfigError: an entry the exporter would not take, or could not send; the message names
            the entry by its position only: a value may be a secret.
    """
    headers: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), 1):
        if not entry.strip():
            continue
        name, equals, raw = (part.strip() for part in entry.partition("="))
        value = raw if " " in raw else unquote(raw)  # the SDK decodes only the strict (no space) form
        if (
            not equals
            or not _HEADER_NAME.match(name)
            or not (raw.isascii() and raw.isprintable())
            or _NOT_IN_VALUE.intersection(raw)
            or not (value.isascii() and value.isprintable())
        ):
            raise ConfigError(
                f"{variable}: entry {number} is not NAME=VALUE with a header name and a printable, "
                "URL-encoded value (values are never shown: they may be secrets)"
            )
        headers[name.lower()] = value
    return headers


def _sampler(environ: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER (and its ratio in OTEL_TRACES_SAMPLER_ARG), else every trace, parent-based.

    Raises:
        ConfigError: a sampler the gateway does not have, or a ratio that is not one.
    """
    found = _variable(environ, (SAMPLER,))
    name = found[1].lower() if found is not None else "parentbased_always_on"
    ratio = 1.0
    argument = _variable(environ, (SAMPLER_ARG,))
    if argument is not None and name in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(argument[1])
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"{SAMPLER_ARG}: {argument[1]!r} is not a ratio from 0 to 1")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    sampler = samplers.get(name)
    if sampler is None:
        known = ", ".join(samplers)
        raise ConfigError(f"{SAMPLER}: {name!r} is not a sampler the gateway has; use one of {known}")
    return sampler


def _service_name(environ: Mapping[str, str]) -> str:
    """OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES (the SDK's order), else the
    gateway's own name. The resource's other attributes are the SDK's to read (Resource.create)."""
    named = _variable(environ, (SERVICE_NAME,))
    if named is not None:
        return named[1]
    for entry in environ.get(RESOURCE_ATTRIBUTES, "").split(","):
        key, _, value = entry.partition("=")
        if key.strip() == "service.name" and value.strip():
            return unquote(value.strip())
    return DEFAULT_SERVICE_NAME


def _batching(environ: Mapping[str, str], variable: str, field: str, per_unit: int) -> Any:
    """[tracing] ``field`` (export_delay, s; max_queued_spans) from OTEL_BSP_SCHEDULE_DELAY (ms) or
    OTEL_BSP_MAX_QUEUE_SIZE, within the field's bounds; None when the variable is unset.

    Raises:
        ConfigError: not a number within the field's bounds.
    """
    found = _variable(environ, (variable,))
    if found is None:
        return None
    try:
        number = float(found[1]) / per_unit if per_unit != 1 else int(found[1])
        return getattr(TracingConfig.model_validate({field: number}), field)
    except (ValueError, ValidationError):
        raise ConfigError(f"{variable}: {found[1]!r} is out of the bounds of [tracing] {field}") from None


def _check_endpoint(protocol: str, endpoint: str, source: str) -> None:
    """An endpoint from a variable (or the default) is a URL, or for OTLP/gRPC also HOST:PORT.

    Raises:
        ConfigError: it is neither.
    """
    parts = urlsplit(endpoint) if "://" in endpoint else None
    if parts is not None and parts.scheme in ("http", "https") and parts.netloc:
        return
    if parts is None and protocol == "grpc":
        try:
            parse_host_port(endpoint)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        return
    takes = "an http:// or https:// URL or HOST:PORT" if protocol == "grpc" else "an http:// or https:// URL"
    raise ConfigError(f"{source}: {endpoint!r} is not {takes}, which OTLP over {protocol} takes")


@dataclass(frozen=True)
class Settings:
    """Where and how spans are exported: ``[tracing]`` where it says, else the OTEL_* variables,
    else the defaults."""

    protocol: str  # "grpc" or "http/protobuf"
    endpoint: str
    # True: the endpoint is [tracing]'s (OTLP/gRPC: HOST:PORT, plaintext without [tracing.tls]);
    # False: a variable's or the default, read as the SDK's exporter reads it (http:// plaintext,
    # https:// TLS, and the exporter's own variables for certificates).
    configured_endpoint: bool
    headers: dict[str, str]
    sampler: Sampler
    service_name: str
    tls: Any  # [tracing.tls], or None
    export_timeout: float
    export_delay: float
    max_queued_spans: int

    @classmethod
    def of(cls, config: TracingConfig | None, environ: Mapping[str, str]) -> Settings:
        """Raises:
        ConfigError: a variable the exporter could not use (named, its value shown unless a header).
        """
        table = config if config is not None else TracingConfig()
        given = table.model_fields_set if config is not None else set()
        protocol: str
        if table.endpoint is not None:
            protocol, endpoint, configured = table.protocol, table.endpoint, True
        else:
            configured = False
            if "protocol" in given:
                protocol = table.protocol
            else:
                named = _variable(environ, PROTOCOLS)
                # [tracing] keeps its documented default; the variables alone get the specification's.
                protocol = "grpc" if config is not None else "http/protobuf"
                if named is not None:
                    variable, protocol = named
                    if protocol not in DEFAULT_ENDPOINTS:
                        raise ConfigError(
                            f"{variable}: {protocol!r} is not a protocol the gateway exports with; "
                            "use grpc or http/protobuf"
                        )
            found = _variable(environ, ENDPOINTS)
            if found is None:
                endpoint, source = DEFAULT_ENDPOINTS[protocol], "the default endpoint"
            else:
                source, endpoint = found
            _check_endpoint(protocol, endpoint, source)
            if source == ENDPOINTS[1] and protocol != "grpc":
                endpoint = endpoint.rstrip("/") + "/v1/traces"  # a base URL: the signal's path is added
        named_headers = _variable(environ, HEADERS)
        headers = env_headers(*named_headers) if named_headers is not None else {}
        headers.update(table.headers)
        if "sample_ratio" in given:
            sampler: Sampler = ParentBased(TraceIdRatioBased(table.sample_ratio))
        else:
            sampler = _sampler(environ)
        service_name = table.service_name if "service_name" in given else _service_name(environ)
        delay = None if "export_delay" in given else _batching(environ, SCHEDULE_DELAY, "export_delay", 1000)
        queue = (
            None if "max_queued_spans" in given else _batching(environ, MAX_QUEUE_SIZE, "max_queued_spans", 1)
        )
        return cls(
            protocol,
            endpoint,
            configured,
            headers,
            sampler,
            service_name,
            table.tls,
            table.export_timeout,
            table.export_delay if delay is None else delay,
            table.max_queued_spans if queue is None else queue,
        )


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


def _otlp_exporter(settings: Settings) -> SpanExporter:
    tls = settings.tls
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint, insecure, credentials = settings.endpoint, None, None
        if tls is not None:
            endpoint = urlsplit(endpoint).netloc if "://" in endpoint else endpoint
            insecure = False
            credentials = grpc.ssl_channel_credentials(
                tls.ca.read_bytes() if tls.ca else None,
                tls.key.read_bytes() if tls.key else None,
                tls.cert.read_bytes() if tls.cert else None,
            )
        elif settings.configured_endpoint:
            insecure = True  # [tracing]'s HOST:PORT without [tracing.tls]
        return OTLPSpanExporter(
            endpoint=endpoint,
            insecure=insecure,
            credentials=credentials,
            headers=settings.headers,
            timeout=settings.export_timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(
        endpoint=settings.endpoint,
        certificate_file=str(tls.ca) if tls is not None and tls.ca else None,
        client_certificate_file=str(tls.cert) if tls is not None and tls.cert else None,
        client_key_file=str(tls.key) if tls is not None and tls.key else None,
        headers=settings.headers,
        timeout=settings.export_timeout,
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


# What the HTTP door leaves in ``call.trace`` before the chain: the request's ASGI scope, the
# matched route's template (None: no route took it), and the status it sent when the door refused
# the request itself (None: the call's code says it).
HttpRequest = tuple[dict[str, Any], str | None, int | None]


@dataclass(frozen=True)
class _Forwarded:
    """A call gone upstream: its place in the trace, when it went, and the HTTP door's request."""

    place: _Trace
    started: int  # wall clock, ns: the client span's start
    http: HttpRequest | None


_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


def _peer(attributes: dict[str, str | int], peer: str) -> None:
    """The caller's address as ``Call.peer()`` gives it, as client.* and network.peer.*: grpc's
    ``ipv4:10.0.0.7:5555`` (``ipv6:%5B::1%5D:5555``) is the connection's peer and the client both;
    a trusted proxy's client, ``ipv4:203.0.113.7`` with no port, is the client only."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        if kind == "unix" and address:
            attributes["client.address"] = attributes["network.peer.address"] = address
        return
    address = unquote(address)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif kind == "ipv4":
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if not host:
        return
    attributes["client.address"] = host
    if port.isdigit():
        attributes["client.port"] = attributes["network.peer.port"] = int(port)
        attributes["network.peer.address"] = host


def _http(
    attributes: dict[str, str | int], http: HttpRequest, code: grpc.StatusCode, sent: int, reason: str | None
) -> tuple[str, Status]:
    """The HTTP server span's attributes added to ``attributes``; its name and status."""
    scope, route, status_code = http
    verb = str(scope.get("method", ""))
    if verb in HTTP_METHODS:
        attributes["http.request.method"] = name = verb
    else:
        attributes["http.request.method"], name = "_OTHER", "HTTP"
        attributes["http.request.method_original"] = verb[:MAX_PATH]
    raw: bytes = scope.get("raw_path") or str(scope.get("path", "")).encode()
    attributes["url.path"] = raw.decode("latin-1").partition("?")[0][:MAX_PATH]
    attributes["url.scheme"] = str(scope.get("scheme", "http"))
    if route is not None:
        attributes["http.route"] = route
        name = f"{name} {route}"
    if status_code is None:
        # The door's reply: 200 once a message went out (a stream that fails later ends in its
        # body), else the code's HTTP status; nothing when the client left before any reply.
        if code is grpc.StatusCode.OK or sent:
            status_code = 200
        elif code is not grpc.StatusCode.CANCELLED:
            status_code = HTTP_STATUS.get(code, 500)
    if status_code is None:
        return name, _UNSET
    attributes["http.response.status_code"] = status_code
    if status_code < 500:
        return name, _UNSET
    attributes["error.type"] = str(status_code)
    return name, Status(StatusCode.ERROR, reason)


class Tracer:
    """Spans of the gateway's calls, for the observers; one per process."""

    def __init__(
        self,
        config: TracingConfig | None,
        dropped: Callable[[int], None],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``config`` None: configured by the OTEL_* variables of ``environ`` (default: the
        process's) alone.

        Raises:
            ConfigError: a variable the exporter could not use.
        """
        settings = Settings.of(config, os.environ if environ is None else environ)
        # The exporter logs every failed export (and each retry) itself: _Exporter says it once in
        # FAILURE_LOG_SECONDS, with the count.
        logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
        # The SDK's header parser logs an entry it cannot read, value and all; env_headers has
        # refused those already, and a header's value is never to reach a log.
        logging.getLogger("opentelemetry.util.re").setLevel(logging.CRITICAL)
        self._resource = Resource.create({"service.name": settings.service_name})
        self._scope = InstrumentationScope("grpc-gateway")
        self._sampler = settings.sampler
        self._ids = RandomIdGenerator()
        drops, waiting = _Drops(dropped, settings.endpoint), _Waiting()
        batches = BatchSpanProcessor(
            _Exporter(_otlp_exporter(settings), drops, waiting),
            max_queue_size=settings.max_queued_spans,
            max_export_batch_size=min(512, settings.max_queued_spans),
            schedule_delay_millis=settings.export_delay * 1000,
            export_timeout_millis=settings.export_timeout * 1000,
        )
        self._processor = _Bounded(batches, drops, waiting, settings.max_queued_spans)
        log.info(
            "tracing: spans of service %s to %s over OTLP/%s",
            settings.service_name,
            settings.endpoint,
            "gRPC" if settings.protocol == "grpc" else "HTTP",
        )

    def spans(self, path: str | None, upstream: str | None) -> MethodSpans:
        """The spans of the calls of ``path`` (None: every path no route knows), routed to
        ``upstream`` (an address, or several joined by commas; None: not forwarded)."""
        return MethodSpans(self, path, upstream)

    def place(self, call: Call, name: str) -> _Trace:
        carrier = {key: value for key, value in call.metadata if key in TRACE_HEADERS}
        context = _PROPAGATOR.extract(carrier) if carrier else None
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent, trace_id = None, self._ids.generate_trace_id()
        else:
            trace_id = parent.trace_id
        decided = self._sampler.should_sample(context, trace_id, name, SpanKind.SERVER)
        sampled = decided.decision is Decision.RECORD_AND_SAMPLE
        flags, state = (_SAMPLED if sampled else _NOT_SAMPLED), decided.trace_state
        ids = self._ids
        server = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        client = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        return _Trace(parent, server, client, sampled)

    def span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
        status: Status,
        started: int,
        ended: int,
    ) -> None:
        """A finished span, to the exporter."""
        self._processor.on_end(
            ReadableSpan(
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
        )

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout), then stop the worker."""
        self._processor.shutdown()


class MethodSpans:
    """The spans of one method's calls, with what is fixed per method made once."""

    __slots__ = ("_client", "_name", "_server", "_tracer", "_unrouted")

    def __init__(self, tracer: Tracer, path: str | None, upstream: str | None) -> None:
        self._tracer = tracer
        self._unrouted = path is None
        self._name = RPC_SYSTEM if path is None else path[1:]
        method = OTHER_METHOD if path is None else path[1:]
        self._server: dict[str, str | int] = {"rpc.system.name": RPC_SYSTEM, "rpc.method": method}
        self._client: dict[str, str | int] | None = None
        if upstream is not None:
            self._client = {**self._server, **_server_address(upstream)}

    @property
    def forwards(self) -> bool:
        return self._client is not None

    def forwarding(self, call: Call, metadata: Metadata) -> Metadata:
        """Where the call's spans sit in its trace; ``metadata`` with the client span's trace
        context in place of the caller's."""
        place = self._tracer.place(call, self._name)
        call.trace = _Forwarded(place, time.time_ns(), call.trace)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(place.client)))
        kept = tuple((key, value) for key, value in metadata if key not in TRACE_HEADERS)
        return (*kept, *carrier.items())

    def ended(
        self, call: Call, code: grpc.StatusCode, started: float, reason: str | None, ago: float = 0.0
    ) -> tuple[int, int] | None:
        """The call's spans, finished, to the exporter (when sampled); the server span's trace and
        span ids, None when it is not sampled. ``reason``: why the gateway refused it, if it did;
        ``ago``: seconds since it ended."""
        tracer = self._tracer
        forwarded = call.trace if isinstance(call.trace, _Forwarded) else None
        http: HttpRequest | None = forwarded.http if forwarded is not None else call.trace
        place = tracer.place(call, self._name) if forwarded is None else forwarded.place
        if not place.sampled:
            return None
        ended = time.time_ns() - round(ago * 1e9)
        status_name = code.name
        attributes = {
            **self._server,
            "rpc.response.status_code": status_name,
            "gateway.door": call.door,
            "gateway.request_id": call.request_id,
        }
        if self._unrouted and http is None:
            attributes["rpc.method_original"] = call.method[1 : MAX_PATH + 1]
        if call.client is not None:
            attributes["gateway.client"] = call.client
        if call.rate_limit is not None:
            attributes["gateway.rate_limit"] = call.rate_limit
        if reason is not None:
            attributes["gateway.refused"] = reason
        _peer(attributes, call.peer())
        if http is not None:
            name, status = _http(attributes, http, code, call.sent, reason)
        elif code in SERVER_ERRORS:
            name, status = self._name, Status(StatusCode.ERROR, reason or status_name)
            attributes["error.type"] = status_name
        else:
            name, status = self._name, _UNSET
        if forwarded is not None and self._client is not None:
            upstream = {**self._client, "rpc.response.status_code": status_name}
            failed = _UNSET
            if code is not grpc.StatusCode.OK:
                upstream["error.type"] = status_name
                failed = Status(StatusCode.ERROR, status_name)
            client, server = place.client, place.server
            tracer.span(
                self._name, client, server, SpanKind.CLIENT, upstream, failed, forwarded.started, ended
            )
        server_started = _wall_ns(started)
        tracer.span(
            name, place.server, place.parent, SpanKind.SERVER, attributes, status, server_started, ended
        )
        return place.server.trace_id, place.server.span_id


def _server_address(upstream: str) -> dict[str, str | int]:
    """The client span's server.address (and server.port) for calls to ``upstream``: several
    addresses, or one that is not HOST:PORT, are the whole target, without a port (as the gRPC
    conventions say of a target string)."""
    try:
        host, port = parse_host_port(upstream)
    except ValueError:
        return {"server.address": upstream}
    return {"server.address": host, "server.port": port}
