"""Prometheus metrics of the gateway, and the listener that serves them.

Every series a call touches is bound once, at start-up or at its first use, so that a call
costs a few increments and no label lookup. The metrics live in a registry of their own (not
prometheus_client's global one), served on a listener of their own (``--metrics-listen``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.process_collector import ProcessCollector

from gateway.call.step import Call
from gateway.ops.grpc_metrics import UNKNOWN, GrpcMetrics, SideSeries, grpc_type
from gateway.version import VERSION
from runtime.addresses import format_host_port, parse_host_port
from runtime.serving import BindError

PREFIX = "grpc_gateway"

# Seconds; from a fast call on loopback to a long stream.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Seconds a rate-limit decision on a shared store takes: finer than the call buckets, for a Redis
# near the gateway (bench/limiter_cost.py measures a decision on loopback); the storage timeout
# (0.05 s by default) bounds it.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The modes a replica's rate limiting can be in (see gateway/policy/ratelimit/outage.py).
STORE_MODES = ("shared", "local", "open", "closed")

# What auth failures are counted by; bound up front so that each series reads 0 before its first failure.
AUTH_FAILURE_REASONS = (
    "missing_key",
    "invalid_key",
    "several_keys",
    "not_allowed",
    "locked_out",
    # [[auth.jwt]] (gateway/policy/auth/jwt/): no credential at all, a token that is not good, and
    # a good one refused (PERMISSION_DENIED by an allow rule; UNAVAILABLE without keys to check it).
    "missing_token",
    "missing_credentials",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "token_audience",
    "token_issuer",
    "unknown_key_id",
    "token_claims",
    "keys_unavailable",
)


class MethodMetrics:
    """The series of one method: calls by door and status code, latency, and the conventional
    ``grpc_server_*`` (and for a routed method ``grpc_client_*``) series."""

    __slots__ = (
        "_by_code",
        "_calls",
        "_labels",
        "_latency",
        "_replies_stream",
        "_requests_stream",
        "client",
        "server",
    )

    def __init__(
        self, metrics: GatewayMetrics, service: str, method: str, kind: tuple[bool, bool] | None, routed: bool
    ) -> None:
        """``kind``: whether the method streams requests, replies; None: unknown (an unrouted path)."""
        self._labels = (service, method)
        self._calls = metrics.calls
        self._by_code: dict[tuple[str, grpc.StatusCode], Counter] = {}
        self._latency = metrics.latency.labels(service, method)
        self._requests_stream, self._replies_stream = kind if kind is not None else (False, False)
        labels = (grpc_type(*kind), service, method) if kind is not None else (UNKNOWN, UNKNOWN, UNKNOWN)
        self.server = SideSeries(metrics.grpc.server, labels)
        self.client = SideSeries(metrics.grpc.client, labels) if routed else None

    def finished(self, call: Call, code: grpc.StatusCode, seconds: float, now: float) -> None:
        key = (call.door, code)
        counter = self._by_code.get(key)
        if counter is None:
            counter = self._by_code[key] = self._calls.labels(*self._labels, code.name, call.door)
        counter.inc()
        self._latency.observe(seconds)
        # A unary side carries one message: the request once it arrived (read for a step, or counted
        # by a door that counts every message), the reply once OK.
        arrived = call.first is not None or call.received > 0
        received = call.received if self._requests_stream else int(arrived)
        sent = call.sent if self._replies_stream else int(code is grpc.StatusCode.OK)
        self.server.handled(code, seconds, received, sent)
        if self.client is not None and call.upstream_started:
            self.client.handled(code, now - call.upstream_started, sent, received)


class GatewayMetrics:
    """Every metric the gateway exports. Names follow Prometheus conventions (``_total``, ``_seconds``)."""

    def __init__(self, rules: Iterable[str] = ()) -> None:
        # No *_created series: they double the output and no dashboard of ours reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated in prometheus_client)
        self.registry = CollectorRegistry()
        # CPU, memory and open files of the gateway process (process_cpu_seconds_total, ...).
        ProcessCollector(registry=self.registry)
        Info(f"{PREFIX}_build", "The gateway's version.", registry=self.registry).info({"version": VERSION})
        self.calls = Counter(
            f"{PREFIX}_calls",
            "Calls handled, by gRPC service, method, status code (the gateway's own refusals included) "
            "and door (grpc, http, grpc-web).",
            ["service", "method", "code", "door"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_call_duration_seconds",
            "Time from a call's first request message to its status, by gRPC service and method.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grpc = GrpcMetrics(self.registry, LATENCY_BUCKETS)
        self.in_flight = Gauge(
            f"{PREFIX}_calls_in_flight", "Calls being handled right now.", registry=self.registry
        )
        self._rate_limited = Counter(
            f"{PREFIX}_rate_limited",
            "Calls refused with RESOURCE_EXHAUSTED, by the rate-limit rule that refused them.",
            ["rule"],
            registry=self.registry,
        )
        self._auth_failures = Counter(
            f"{PREFIX}_auth_failures",
            "Calls refused by authentication or access control, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._store_errors = Counter(
            f"{PREFIX}_rate_limit_store_errors",
            "Calls whose rate-limit check failed because the store failed or was too slow "
            "(then allowed or refused as rate_limit.on_storage_error says).",
            registry=self.registry,
        )
        self._store_failures = Counter(
            f"{PREFIX}_rate_limit_store_failures",
            "Failed decisions on the shared rate-limit store, by kind: timeout, connection, protocol, "
            "unexpected, or Redis's error word (readonly, clusterdown, moved, ..., else error).",
            ["kind"],
            registry=self.registry,
        )
        self._decision_latency = Histogram(
            f"{PREFIX}_rate_limit_decision_seconds",
            "Time a rate-limit decision on the shared store took, answered or failed.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self._store_mode = Gauge(
            f"{PREFIX}_rate_limit_store_mode",
            "1 for the mode this replica limits in: shared (the store answers), or while it fails, "
            "local (a share of each budget in memory), open (calls allowed) or closed (refused).",
            ["mode"],
            registry=self.registry,
        )
        self._by_mode = {mode: self._store_mode.labels(mode) for mode in STORE_MODES}
        self._by_kind: dict[str, Counter] = {}
        self._upstream_healthy = Gauge(
            f"{PREFIX}_upstream_healthy",
            "1 while a route's upstream reports SERVING to the gateway's health checks, else 0.",
            ["service", "upstream"],
            registry=self.registry,
        )
        self._jwks_fetches = Counter(
            f"{PREFIX}_jwks_fetches",
            "Fetches of a JWT issuer's keys (its JWKS), by issuer and outcome: ok or failed.",
            ["issuer", "outcome"],
            registry=self.registry,
        )
        self._jwks_keys = Gauge(
            f"{PREFIX}_jwks_keys",
            "Keys of a JWT issuer in use.",
            ["issuer"],
            registry=self.registry,
        )
        self._jwks_failing = Gauge(
            f"{PREFIX}_jwks_fetch_failing",
            "1 while the last fetch of a JWT issuer's keys failed (the last good keys stay in use).",
            ["issuer"],
            registry=self.registry,
        )
        self._jwks_age = Gauge(
            f"{PREFIX}_jwks_age_seconds",
            "Seconds since the keys in use of a JWT issuer were fetched (stale_after bounds it).",
            ["issuer"],
            registry=self.registry,
        )
        self._spans_dropped = Counter(
            f"{PREFIX}_trace_spans_dropped",
            "Spans the trace collector did not take (down, slow or refusing): dropped, never retried.",
            registry=self.registry,
        )
        self._by_rule = {rule: self._rate_limited.labels(rule) for rule in rules}
        self._by_reason = {reason: self._auth_failures.labels(reason) for reason in AUTH_FAILURE_REASONS}

    def for_method(
        self, service: str, method: str, kind: tuple[bool, bool] | None, routed: bool
    ) -> MethodMetrics:
        return MethodMetrics(self, service, method, kind, routed)

    def rate_limited(self, rule: str) -> None:
        _bound(self._by_rule, self._rate_limited, rule).inc()

    def auth_failed(self, reason: str) -> None:
        _bound(self._by_reason, self._auth_failures, reason).inc()

    def store_error(self) -> None:
        self._store_errors.inc()

    def store_decided(self, seconds: float) -> None:
        self._decision_latency.observe(seconds)

    def store_failed(self, kind: str) -> None:
        _bound(self._by_kind, self._store_failures, kind).inc()

    def store_mode(self, mode: str) -> None:
        for name, gauge in self._by_mode.items():
            gauge.set(1 if name == mode else 0)

    def spans_dropped(self, spans: int) -> None:
        self._spans_dropped.inc(spans)

    def upstream_health(self, service: str, upstream: str, serving: bool) -> None:
        self._upstream_healthy.labels(service, upstream).set(1 if serving else 0)

    def jwks_fetched(self, issuer: str, ok: bool, keys: int) -> None:
        """A fetch of ``issuer``'s keys ended (on its key set's thread)."""
        self._jwks_fetches.labels(issuer, "ok" if ok else "failed").inc()
        self._jwks_keys.labels(issuer).set(keys)
        self._jwks_failing.labels(issuer).set(0 if ok else 1)

    def jwks_age(self, issuer: str, age: Callable[[], float]) -> None:
        """Read ``issuer``'s keys' age from ``age`` at each scrape."""
        self._jwks_age.labels(issuer).set_function(age)


def _bound(series: dict[str, Counter], family: Counter, label: str) -> Counter:
    """The series of ``family`` for ``label``, bound on its first use and kept in ``series``."""
    counter = series.get(label)
    if counter is None:
        counter = series[label] = family.labels(label)
    return counter


def metrics_address(text: str) -> str:
    """``HOST:PORT``, or a bare ``PORT`` meaning loopback (``127.0.0.1:PORT``).

    Raises:
        ValueError: neither form.
    """
    if text.isdigit():
        text = format_host_port("127.0.0.1", int(text))
    parse_host_port(text)
    return text


# GET /healthz and /readyz on the metrics listener too: (HTTP status, JSON body) by path.
Probes = Callable[[str], tuple[int, bytes]]
PROBE_PATHS = ("/healthz", "/readyz")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes are not logged
        return


class MetricsServer:
    """``GET /metrics`` over plain HTTP, on a thread of its own (prometheus_client's WSGI app, on a
    thread per request); ``GET /healthz`` and ``/readyz`` from ``probes``, set before ``start()``.

    A scrape renders the text on that thread; calls never wait for it. ``settle``, when set before
    ``start()``, runs first: the engine's calls that ended before the scrape are then counted in it.
    """

    def __init__(self, metrics: GatewayMetrics, address: str) -> None:
        self._metrics = metrics
        self.address = address
        self.probes: Probes | None = None
        self.settle: Callable[[], None] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
        metrics = make_wsgi_app(self._metrics.registry)
        probes = self.probes
        settle = self.settle

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if probes is not None and path in PROBE_PATHS and environ["REQUEST_METHOD"] in ("GET", "HEAD"):
                code, body = probes(path)
                start_response(
                    f"{code} {HTTPStatus(code).phrase}",
                    [
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store"),
                    ],
                )
                return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]
            if settle is not None:
                settle()
            result: Iterable[bytes] = metrics(environ, start_response)
            return result

        return app

    def start(self) -> int:
        """Listen; the bound port.

        Raises:
            BindError: the address is taken or not an address of this machine.
        """
        host, port = parse_host_port(self.address)
        try:
            # The address's family, as prometheus_client's own server finds it.
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, bound = found[0][0], str(found[0][4][0])

            class Server(ThreadingWSGIServer):
                address_family = family

            self._server = make_server(bound, port, self._app(), Server, handler_class=_Quiet)
        except OSError as error:
            raise BindError(
                f"cannot listen on {self.address} for metrics ({error.strerror}); "
                "choose another --metrics-listen address"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return int(self._server.server_port)

    async def stop(self) -> None:
        if self._server is not None:
            # shutdown() waits for the serving loop to notice (up to half a second): not on the event loop.
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
