"""Assembles the gateway: interceptors in policy order, the proxy, health and reflection."""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from gateway.auth import AuthInterceptor
from gateway.config import GatewayConfig
from gateway.limiter import RateLimitPolicy
from gateway.proxy import add_proxy
from gateway.ratelimit import RateLimitInterceptor
from gateway.routes import RouteTable
from gateway.upstreams import HealthMonitor, Upstreams
from runtime.introspection import HEALTH_SERVICE, REFLECTION_V1, add_health, add_reflection
from runtime.serving import listen, wait_for_stop_signal

log = logging.getLogger("gateway")

REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", REFLECTION_V1)


class Gateway:
    """A configured gateway server. Build it inside the running event loop."""

    def __init__(
        self, config: GatewayConfig, routes: RouteTable, policy: RateLimitPolicy, reuse_port: bool = False
    ) -> None:
        self.config = config
        public = [HEALTH_SERVICE, *(REFLECTION_SERVICES if config.reflection.public else ())]
        self.server = grpc.aio.server(
            interceptors=[
                AuthInterceptor(config.api_keys, public_services=public),
                RateLimitInterceptor(policy, routes),
            ],
            # Off unless asked (--workers): a second gateway could otherwise bind the port unnoticed.
            options=[("grpc.so_reuseport", int(reuse_port))],
        )
        self._upstreams = Upstreams(routes.upstream_of.values())
        add_proxy(self.server, routes, self._upstreams)
        self._health = add_health(self.server)
        # Clients such as grpcurl resolve the rich error details of refusals through reflection.
        routes.catalog.add_compiled(error_details_pb2.DESCRIPTOR)
        add_reflection(self.server, routes.upstream_of, routes.catalog)
        self._monitor = HealthMonitor(
            routes.upstream_of, self._upstreams, self._health, config.health_check_interval
        )
        self._monitoring: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen, then report health: overall SERVING, each route as its upstream reports."""
        self.port = listen(self.server, self.config.listen)
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


async def serve(
    config: GatewayConfig, routes: RouteTable, policy: RateLimitPolicy, reuse_port: bool = False
) -> int:
    """Run the gateway until SIGTERM or SIGINT; in-flight calls get the configured grace period."""
    gateway = Gateway(config, routes, policy, reuse_port)
    await gateway.start()
    log.info("listening", extra={"address": config.listen, "routes": dict(routes.upstream_of)})
    await wait_for_stop_signal()
    log.info("shutting down", extra={"grace_seconds": config.shutdown_grace})
    await gateway.stop(config.shutdown_grace)
    log.info("stopped")
    return 0
