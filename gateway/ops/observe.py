"""Every call, seen once from outside: its metrics and its access-log line, made when it ends.

A door asks the call's method chain for its observer, calls ``start()`` as the call arrives and
``ended(call, code, started)`` once its status is sent, however it ended: forwarded, refused by a
step, or cancelled. What the steps learnt on the way (the client, an auth failure, the rate-limit
outcome) is read from the call then, so no step reports to the metrics itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from gateway.call.metadata import forwarded
from gateway.call.step import Call, Metadata
from gateway.config.schema import GatewayConfig
from gateway.ops.accesslog import AccessLog, method_part
from gateway.ops.metrics import GatewayMetrics, MethodMetrics, MetricsServer
from gateway.ops.own_services import OwnMethod
from gateway.routing.table import RouteTable

if TYPE_CHECKING:
    from gateway.ops.tracing import MethodSpans, Tracer

log = logging.getLogger("gateway.tracing")

# Metric labels of every call to a method that is neither routed nor the gateway's own: a caller
# must not be able to create series by inventing method names.
UNROUTED = "unrouted"


class MethodObserver:
    """Counts, logs and traces the calls of one method; built once per method."""

    def __init__(
        self,
        path: str | None,
        upstream: str | None,
        limited: bool,
        gateway_metrics: GatewayMetrics | None,
        metrics: MethodMetrics | None,
        access_log: AccessLog | None,
        tracer: Tracer | None,
    ) -> None:
        """``path`` None: the observer of every path no route knows, logged with the path asked for."""
        self._unrouted = path is None
        self._spans: MethodSpans | None = tracer.spans(path, upstream or None) if tracer is not None else None
        self._limited = limited
        self._gateway_metrics = gateway_metrics
        self._metrics = metrics
        self._in_flight = gateway_metrics.in_flight.inc if gateway_metrics is not None else None
        self._log = access_log
        self._method_part = None if path is None else method_part(path, upstream)

    def start(self) -> float:
        if self._metrics is not None:
            self._metrics.server.started.inc()
        if self._in_flight is not None:
            self._in_flight(1)
        return time.perf_counter()

    def forwarding(self, call: Call) -> Metadata:
        """The metadata to send upstream with ``call``, which the door is about to forward (the
        lifecycle has set ``call.upstream_started``)."""
        if self._metrics is not None and self._metrics.client is not None:
            self._metrics.client.started.inc()
        if self._spans is not None and self._spans.forwards:
            return self._spans.forwarding(call, forwarded(call))
        return forwarded(call)

    def ended(self, call: Call, code: grpc.StatusCode, started: float, ago: float = 0.0) -> None:
        """The call that ``start()`` returned ``started`` for ended with ``code``, ``ago`` seconds ago."""
        now = time.perf_counter() - ago
        seconds = now - started
        traced = None
        if self._spans is not None:
            traced = self._spans.ended(call, code, started, self._refused_by(call, code), ago)
        metrics = self._gateway_metrics
        if metrics is not None:
            if call.auth_failure is not None:
                metrics.auth_failed(call.auth_failure)
            if call.rate_limit == "store_error":
                metrics.store_error()
            elif call.limited_by is not None:
                metrics.rate_limited(call.limited_by)
        if self._metrics is not None and self._in_flight is not None:
            self._in_flight(-1)
            self._metrics.finished(call, code, seconds, now)
        if self._log is None:
            return
        outcome = call.rate_limit
        if outcome is None:
            if not self._limited:
                outcome = "none"  # no rule covers the method
            elif call.client is not None:
                outcome = "allowed"
            # else: refused before the limiter saw it (null)
        method = self._method_part if self._method_part is not None else method_part(call.method, None)
        self._log.write(
            call.request_id, call.peer(), call.client, method, code.name, seconds, outcome, traced, ago
        )

    def _refused_by(self, call: Call, code: grpc.StatusCode) -> str | None:
        """Why the gateway refused ``call`` itself, for its span; None: it did not."""
        if call.upstream_started or code is grpc.StatusCode.OK:
            return None
        if call.auth_failure is not None:
            return f"auth: {call.auth_failure}"
        if call.limited_by is not None:
            return f"rate limit: {call.limited_by}"
        if call.rate_limit == "store_error":
            return "rate limit: the store failed"
        if self._unrouted:
            return "unrouted"
        return f"refused: {code.name}"


class CallObservers:
    """The observer of every method the gateway answers, and one for all other paths.

    ``metrics`` None: no metrics are kept (no --metrics-listen). ``access_log`` None or disabled: no lines.
    ``local_methods`` are the paths the gateway answers itself (health, reflection).
    """

    def __init__(
        self,
        routes: RouteTable,
        limited: Callable[[str], bool],
        local_methods: Mapping[str, OwnMethod],
        metrics: GatewayMetrics | None,
        access_log: AccessLog | None,
        tracer: Tracer | None = None,
    ) -> None:
        log = access_log if access_log is not None and access_log.enabled else None

        def observer(
            path: str | None,
            service: str,
            upstream: str | None,
            is_limited: bool,
            kind: tuple[bool, bool] | None,
        ) -> MethodObserver:
            method = UNROUTED if path is None else path.rsplit("/", 1)[-1]
            bound = None
            if metrics is not None:
                bound = metrics.for_method(service, method, kind, routed=upstream is not None)
            return MethodObserver(path, upstream, is_limited, metrics, bound, log, tracer)

        self.methods = {
            path: observer(
                path,
                route.service,
                route.upstream,
                limited(path),
                (route.client_streaming, route.server_streaming),
            )
            for path, route in routes.methods.items()
        }
        for path, own in local_methods.items():
            kind = (own.client_streaming, own.server_streaming)
            self.methods[path] = observer(path, own.service, None, False, kind)
        self.unrouted = observer(None, UNROUTED, None, False, None)


@dataclass
class Observability:
    """The gateway's metrics (None without a metrics listener), their listener, its access log, and
    its tracer (None when it does not trace: see :func:`traces`)."""

    metrics: GatewayMetrics | None
    metrics_server: MetricsServer | None
    access_log: AccessLog
    tracer: Tracer | None = None

    async def close(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)  # its last export may wait on the collector
        self.access_log.close()


def load_observability(config: GatewayConfig) -> Observability:
    """Metrics and access log as ``config`` asks; call after logging is configured.

    Raises:
        ConfigError: the access log's file cannot be opened.
    """
    metrics = None
    server = None
    if config.metrics_listen is not None:
        metrics = GatewayMetrics(rule.name for rule in config.rate_limit.rules)
        server = MetricsServer(metrics, config.metrics_listen)
    tracer = None
    if traces(config, os.environ):
        # OpenTelemetry's SDK and exporter are slow to import: only a gateway that traces pays for it.
        from gateway.ops.tracing import Tracer

        tracer = Tracer(config.tracing, metrics.spans_dropped if metrics is not None else _uncounted)
    return Observability(metrics, server, AccessLog(config.access_log), tracer)


def traces(config: GatewayConfig, environ: Mapping[str, str]) -> bool:
    """Whether the gateway traces: with [tracing], or without it when the OTEL_* variables name
    where spans go (an endpoint, or OTEL_TRACES_EXPORTER=otlp), as an OpenTelemetry SDK is
    configured by the variables alone; never with OTEL_SDK_DISABLED=true, the SDK's off switch.

    Other OTEL_* variables (a service name, say, set for every process of a platform) do not turn
    tracing on: a gateway that does not trace never imports the SDK.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        if config.tracing is not None:
            log.warning("[tracing] is ignored: OTEL_SDK_DISABLED=true turns OpenTelemetry off")
        return False
    if config.tracing is not None:
        return True
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    exporters.discard("")
    if exporters:
        return "otlp" in exporters
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(environ.get(name, "").strip() for name in endpoints)


def _uncounted(spans: int) -> None:
    """Dropped spans without a metrics listener: the exporter's log line says it."""
