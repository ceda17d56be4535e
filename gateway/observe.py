"""Every call, seen once from outside: its request id, its metrics and its access-log line.

``ObservingInterceptor`` runs before every other interceptor. It gives the call a request id
and a ``CallRecord`` (in a context variable), then wraps the handler the other interceptors
chose, whether it forwards the call or refuses it, so that its end is counted and logged.
The wrapped handler is built once per method and handler, not per call.

The other parts of the gateway report what only they know through the record of the current
call, one line each: ``await current().auth_failed(context, reason)`` and ``await
current().rate_limited(context, rule)`` just before they refuse a call, ``current().store_error()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gateway import callstate
from gateway.accesslog import AccessLog, method_part
from gateway.callstate import Continuation
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics, MethodMetrics, MetricsServer
from gateway.requestid import HEADER, request_id_of
from gateway.routes import RouteTable
from runtime.calllog import final_code, observe
from runtime.introspection import REFLECTION_V1

REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


# Metric labels of every call to a method that is neither routed nor the gateway's own: a caller
# must not be able to create series by inventing method names.
UNROUTED = "unrouted"

# A path can meet a few handlers (forwarding, and each refusal of auth); more are built per call.
_HANDLERS_PER_METHOD = 8


class CallRecord:
    """What the gateway learns about one call while it runs, for its metrics and its log line."""

    __slots__ = ("_metrics", "rate_limit", "request_id")

    def __init__(self, request_id: str, metrics: GatewayMetrics | None) -> None:
        self.request_id = request_id
        # "refused" or "store_error" once the limiter says so; see _MethodObserver._write for the rest.
        self.rate_limit: str | None = None
        self._metrics = metrics

    async def rate_limited(self, context: grpc.aio.ServicerContext, rule: str) -> None:
        """Await just before refusing the call with RESOURCE_EXHAUSTED for ``rule`` (its name).

        Counts the refusal and sends the request id in the initial metadata, as every reply has it.
        """
        self.count_rate_limited(rule)
        await self._send_request_id(context)

    def count_rate_limited(self, rule: str) -> None:
        self.rate_limit = "refused"
        if self._metrics is not None:
            self._metrics.rate_limited(rule)

    def store_error(self) -> None:
        """The rate-limit store failed or was too slow for this call."""
        self.rate_limit = "store_error"
        if self._metrics is not None:
            self._metrics.store_error()

    async def auth_failed(self, context: grpc.aio.ServicerContext, reason: str) -> None:
        """Await just before refusing the call for ``reason`` (one of metrics.AUTH_FAILURE_REASONS).

        Counts the refusal and sends the request id in the initial metadata, as every reply has it.
        """
        self.count_auth_failure(reason)
        await self._send_request_id(context)

    async def _send_request_id(self, context: grpc.aio.ServicerContext) -> None:
        if self.request_id:  # else not an observed call
            await context.send_initial_metadata(((HEADER, self.request_id),))

    def count_auth_failure(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_failed(reason)


_current: ContextVar[CallRecord | None] = ContextVar("call_record", default=None)

# Outside an observed call (a unit test of a single interceptor, say) reports go nowhere.
_DETACHED = CallRecord("", None)


def current() -> CallRecord:
    """The record of the call being handled."""
    return _current.get() or _DETACHED


class MethodObserver:
    """Counts and logs the calls of one method; built once per method."""

    def __init__(
        self,
        path: str,
        upstream: str | None,
        limited: bool,
        metrics: MethodMetrics | None,
        in_flight: Callable[[float], None] | None,
        access_log: AccessLog | None,
    ) -> None:
        self._limited = limited
        self._metrics = metrics
        self._in_flight = in_flight
        self._log = access_log
        self._method_part = method_part(path, upstream)
        self.wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    def start(self) -> float:
        if self._in_flight is not None:
            self._in_flight(1)
        return time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
        self._end_in_context(context, started, error, self._method_part)

    def finish_unrouted(
        self, path: str
    ) -> Callable[[grpc.aio.ServicerContext, float, BaseException | None], None]:
        """``finish`` for a call to a path no route knows: logged with the path it asked for."""

        def finish(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
            self._end_in_context(context, started, error, method_part(path, None))

        return finish

    def _end_in_context(
        self,
        context: grpc.aio.ServicerContext,
        started: float,
        error: BaseException | None,
        method: str,
    ) -> None:
        record = current()
        client = callstate.client_name.get() or None
        self.ended(final_code(context, error), started, context.peer, client, record, method)

    def ended(
        self,
        code: grpc.StatusCode,
        started: float,
        peer: Callable[[], str],
        client: str | None,
        record: CallRecord,
        method: str | None = None,
    ) -> None:
        """The call that ``start()`` returned ``started`` for ended with ``code``; ``method``: as logged."""
        seconds = time.perf_counter() - started
        if self._metrics is not None and self._in_flight is not None:
            self._in_flight(-1)
            self._metrics.finished(code, seconds)
        if self._log is None:
            return
        outcome = record.rate_limit
        if outcome is None:
            if not self._limited:
                outcome = "none"  # no rule covers the method
            elif client is not None:
                outcome = "allowed"
            # else: refused by auth before the limiter saw it (null)
        self._log.write(
            record.request_id, peer(), client, method or self._method_part, code.name, seconds, outcome
        )


class CallObservers:
    """The observer of every method the gateway answers, and one for all other paths.

    ``metrics`` None: no metrics are kept (no --metrics-listen). ``access_log`` None or disabled: no lines.
    ``local_methods`` are the paths the gateway answers itself (health, reflection).
    """

    def __init__(
        self,
        routes: RouteTable,
        limited: Callable[[str], bool],
        local_methods: dict[str, str],
        metrics: GatewayMetrics | None,
        access_log: AccessLog | None,
    ) -> None:
        self.metrics = metrics
        log = access_log if access_log is not None and access_log.enabled else None
        self.access_log = log
        in_flight = metrics.in_flight.inc if metrics is not None else None

        def observer(path: str, service: str, upstream: str | None, is_limited: bool) -> MethodObserver:
            method = path.rsplit("/", 1)[-1]
            bound = metrics.for_method(service, method) if metrics is not None else None
            return MethodObserver(path, upstream, is_limited, bound, in_flight, log)

        self.methods = {
            path: observer(path, route.service, route.upstream, limited(path))
            for path, route in routes.methods.items()
        }
        for path, service in local_methods.items():
            self.methods[path] = observer(path, service, None, False)
        self.unrouted = observer(f"/{UNROUTED}/{UNROUTED}", UNROUTED, None, False)
        self.enabled = metrics is not None or log is not None


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """The first interceptor: request id, metrics and access log for every call."""

    def __init__(self, observers: CallObservers) -> None:
        self._observers = observers
        self._metrics = observers.metrics
        self._methods = observers.methods
        self._unrouted = observers.unrouted
        self._enabled = observers.enabled

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        request_id = request_id_of(handler_call_details.invocation_metadata)
        callstate.request_id.set(request_id)
        _current.set(CallRecord(request_id, self._metrics))
        handler = await continuation(handler_call_details)
        if handler is None or not self._enabled:
            return handler
        path: str = handler_call_details.method
        observer = self._methods.get(path)
        if observer is None:
            return observe(handler, self._unrouted.start, self._unrouted.finish_unrouted(path))
        wrapped = observer.wrapped.get(handler)
        if wrapped is None:
            wrapped = observe(handler, observer.start, observer.finish)
            if len(observer.wrapped) >= _HANDLERS_PER_METHOD:
                # Handlers made per call (auth's, while an address is locked out) would fill it for good.
                observer.wrapped.clear()
            observer.wrapped[handler] = wrapped
        return wrapped


def local_methods() -> dict[str, str]:
    """Paths the gateway answers itself (health, both reflection versions) -> their service names."""
    methods: dict[str, str] = {}
    for service in (health_pb2.DESCRIPTOR.services_by_name["Health"], *_reflection_services()):
        for method in service.methods:
            methods[f"/{service.full_name}/{method.name}"] = service.full_name
    methods.update(
        {
            path.replace(REFLECTION_V1ALPHA, REFLECTION_V1): REFLECTION_V1
            for path in list(methods)
            if path.startswith(f"/{REFLECTION_V1ALPHA}/")
        }
    )
    return methods


def local_method_kinds() -> dict[str, tuple[bool, bool]]:
    """The gateway's own paths -> whether each streams requests, and replies."""
    kinds: dict[str, tuple[bool, bool]] = {}
    for service in (health_pb2.DESCRIPTOR.services_by_name["Health"], *_reflection_services()):
        for method in service.methods:
            kind = (method.client_streaming, method.server_streaming)
            kinds[f"/{service.full_name}/{method.name}"] = kind
            kinds[f"/{service.full_name.replace(REFLECTION_V1ALPHA, REFLECTION_V1)}/{method.name}"] = kind
    return kinds


def _reflection_services() -> list[ServiceDescriptor]:
    return list(reflection_pb2.DESCRIPTOR.services_by_name.values())


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
