"""Assembles the gateway: interceptors in policy order, the proxy, health and reflection."""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from gateway.config import GatewayConfig
from gateway.limiter import RateLimitPolicy
from gateway.observe import Observability, ObservingInterceptor, load_observability, local_methods
from gateway.proxy import add_proxy
from gateway.ratelimit import RateLimitInterceptor
from gateway.routes import RouteTable
from gateway.security import Security
from gateway.upstreams import HealthMonitor, Upstreams
from runtime.introspection import add_health, add_reflection
from runtime.serving import listen, wait_for_stop_signal

log = logging.getLogger("gateway")


class Gateway:
    """A configured gateway server. Build it inside the running event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        routes: RouteTable,
        policy: RateLimitPolicy,
        security: Security,
        reuse_port: bool = False,
        observability: Observability | None = None,
    ) -> None:
        self.config = config
        self._security = security
        self._observability = observability or load_observability(config)
        metrics = self._observability.metrics
        observing = ObservingInterceptor(
            routes,
            lambda path: bool(policy.rules_for(path)),
            local_methods(),
            metrics,
            self._observability.access_log,
        )
        self.server = grpc.aio.server(
            # Observing first, to see every call however it ends; then the metadata check and auth:
            # a call without a valid key never spends budget.
            interceptors=[observing, *security.interceptors(), RateLimitInterceptor(policy, routes)],
            # Off unless asked (--workers): a second gateway could otherwise bind the port unnoticed.
            options=[("grpc.so_reuseport", int(reuse_port)), *security.server_options],
        )
        self._upstreams = Upstreams(config.routes, config.upstream_keepalive, security.upstream_transports)
        add_proxy(self.server, routes, self._upstreams)
        self._health = add_health(self.server)
        # Clients such as grpcurl resolve the rich error details of refusals through reflection.
        routes.catalog.add_compiled(error_details_pb2.DESCRIPTOR)
        if config.reflection.enabled:
            add_reflection(self.server, routes.upstream_of, routes.catalog)
        self._monitor = HealthMonitor(
            routes.upstream_of,
            self._upstreams,
            self._health,
            config.health_check_interval,
            on_change=None if metrics is None else metrics.upstream_health,
        )
        self._monitoring: asyncio.Task[None] | None = None
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Listen, then report health: overall SERVING, each route as its upstream reports."""
        if self._observability.metrics_server is not None:
            self.metrics_port = self._observability.metrics_server.start()
        self.port = listen(self.server, self.config.listen, self._security.server_credentials)
        await self.server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._monitor.check_all()
        self._monitoring = asyncio.create_task(self._monitor.run())

    async def stop(self, grace: float) -> None:
        """Turn health to NOT_SERVING, stop accepting calls, let in-flight calls finish within ``grace``."""
        await self._health.enter_graceful_shutdown()
        if self._monitoring is not None:
            self._monitoring.cancel()
        await self.server.stop(grace)
        await self._upstreams.close()
        await self._observability.close()


async def serve(
    config: GatewayConfig,
    routes: RouteTable,
    policy: RateLimitPolicy,
    security: Security,
    reuse_port: bool = False,
    observability: Observability | None = None,
) -> int:
    """Run the gateway until SIGTERM or SIGINT; in-flight calls get the configured grace period."""
    gateway = Gateway(config, routes, policy, security, reuse_port, observability)
    await gateway.start()
    log.info(
        "listening",
        extra={
            "address": config.listen,
            "tls": "off" if config.tls is None else ("mtls" if config.tls.client_ca else "tls"),
            "routes": dict(routes.upstream_of),
            "metrics": config.metrics_listen,
        },
    )
    await wait_for_stop_signal()
    log.info("shutting down", extra={"grace_seconds": config.shutdown_grace})
    await gateway.stop(config.shutdown_grace)
    log.info("stopped")
    return 0
