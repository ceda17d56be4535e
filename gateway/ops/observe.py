"""Every call, seen once from outside: its metrics and its access-log line, made when it ends.

A door asks the call's method chain for its observer, calls ``start()`` as the call arrives and
``ended(call, code, started)`` once its status is sent, however it ended: forwarded, refused by a
step, or cancelled. What the steps learnt on the way (the client, an auth failure, the rate-limit
outcome) is read from the call then, so no step reports to the metrics itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

from gateway.call.step import Call
from gateway.config.schema import GatewayConfig
from gateway.ops.accesslog import AccessLog, method_part
from gateway.ops.metrics import GatewayMetrics, MethodMetrics, MetricsServer
from gateway.routing.table import RouteTable

# Metric labels of every call to a method that is neither routed nor the gateway's own: a caller
# must not be able to create series by inventing method names.
UNROUTED = "unrouted"


class MethodObserver:
    """Counts and logs the calls of one method; built once per method."""

    def __init__(
        self,
        path: str | None,
        upstream: str | None,
        limited: bool,
        gateway_metrics: GatewayMetrics | None,
        metrics: MethodMetrics | None,
        access_log: AccessLog | None,
    ) -> None:
        """``path`` None: the observer of every path no route knows, logged with the path asked for."""
        self._limited = limited
        self._gateway_metrics = gateway_metrics
        self._metrics = metrics
        self._in_flight = gateway_metrics.in_flight.inc if gateway_metrics is not None else None
        self._log = access_log
        self._method_part = None if path is None else method_part(path, upstream)

    def start(self) -> float:
        if self._in_flight is not None:
            self._in_flight(1)
        return time.perf_counter()

    def ended(self, call: Call, code: grpc.StatusCode, started: float) -> None:
        """The call that ``start()`` returned ``started`` for ended with ``code``."""
        seconds = time.perf_counter() - started
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
            self._metrics.finished(code, seconds)
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
        self._log.write(call.request_id, call.peer(), call.client, method, code.name, seconds, outcome)


class CallObservers:
    """The observer of every method the gateway answers, and one for all other paths.

    ``metrics`` None: no metrics are kept (no --metrics-listen). ``access_log`` None or disabled: no lines.
    ``local_methods`` are the paths the gateway answers itself (health, reflection).
    """

    def __init__(
        self,
        routes: RouteTable,
        limited: Callable[[str], bool],
        local_methods: Mapping[str, str],
        metrics: GatewayMetrics | None,
        access_log: AccessLog | None,
    ) -> None:
        log = access_log if access_log is not None and access_log.enabled else None

        def observer(
            path: str | None, service: str, upstream: str | None, is_limited: bool
        ) -> MethodObserver:
            method = UNROUTED if path is None else path.rsplit("/", 1)[-1]
            bound = metrics.for_method(service, method) if metrics is not None else None
            return MethodObserver(path, upstream, is_limited, metrics, bound, log)

        self.methods = {
            path: observer(path, route.service, route.upstream, limited(path))
            for path, route in routes.methods.items()
        }
        for path, service in local_methods.items():
            self.methods[path] = observer(path, service, None, False)
        self.unrouted = observer(None, UNROUTED, None, False)


@dataclass
class Observability:
    """The gateway's metrics (None without a metrics listener), their listener, and its access log."""

    metrics: GatewayMetrics | None
    metrics_server: MetricsServer | None
    access_log: AccessLog

    async def close(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
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
    return Observability(metrics, server, AccessLog(config.access_log))
