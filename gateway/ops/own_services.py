"""The gateway's own services, listed once: health and reflection (``v1`` and ``v1alpha``).

Both are grpc.aio servicers. The engine decides where they are served (on its listener, or on a
private socket behind it); the gateway sets health statuses and swaps reflection's answers on a
reload through this one object, whichever engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.config.schema import GatewayConfig
from gateway.routing.table import RouteTable
from runtime.descriptors import DescriptorCatalog
from runtime.introspection import (
    HEALTH_SERVICE,
    REFLECTION_V1,
    CatalogReflectionServicer,
    add_health,
    add_reflection,
)

REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_SERVICES = (REFLECTION_V1ALPHA, REFLECTION_V1)


@dataclass(frozen=True)
class OwnMethod:
    service: str
    client_streaming: bool
    server_streaming: bool


def _descriptors() -> list[tuple[str, ServiceDescriptor]]:
    services: list[tuple[str, ServiceDescriptor]] = [
        (HEALTH_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"])
    ]
    for descriptor in reflection_pb2.DESCRIPTOR.services_by_name.values():
        services.extend((name, descriptor) for name in REFLECTION_SERVICES)
    return services


def own_methods(config: GatewayConfig) -> dict[str, OwnMethod]:
    """The paths the gateway answers itself as ``config`` asks (reflection may be off)."""
    methods = {}
    for name, service in _descriptors():
        if name != HEALTH_SERVICE and not config.reflection.enabled:
            continue
        for method in service.methods:
            methods[f"/{name}/{method.name}"] = OwnMethod(
                name, method.client_streaming, method.server_streaming
            )
    return methods


def every_own_path() -> list[str]:
    """Every path of the gateway's own services, served or not (a key's ``allow`` list always has them:
    reflection describes only what is routed, and health says only whether it is up)."""
    return [f"/{name}/{method.name}" for name, service in _descriptors() for method in service.methods]


def public_services(config: GatewayConfig) -> list[str]:
    """Services of the gateway's own that need no key, as the config says."""
    public = [HEALTH_SERVICE] if config.health.public else []
    if config.reflection.enabled and config.reflection.public:
        public.extend(REFLECTION_SERVICES)
    return public


def _catalog(routes: RouteTable) -> DescriptorCatalog:
    # Clients such as grpcurl resolve the rich error details of refusals through reflection.
    routes.catalog.add_compiled(error_details_pb2.DESCRIPTOR)
    return routes.catalog


class OwnServices:
    """Health (overall, and per routed service) and reflection for the routed services."""

    def __init__(self, config: GatewayConfig, routes: RouteTable) -> None:
        self._reflects = config.reflection.enabled
        self._routes = routes
        self.health: health.aio.HealthServicer | None = None
        self._reflection: CatalogReflectionServicer | None = None

    def register(self, server: grpc.aio.Server) -> None:
        """Serve them on ``server`` (before it starts)."""
        self.health = add_health(server)
        if self._reflects:
            self._reflection = add_reflection(server, self._routes.upstream_of, _catalog(self._routes))

    def serve_routes(self, routes: RouteTable) -> None:
        """Describe ``routes`` from now on (a reload)."""
        self._routes = routes
        if self._reflection is not None:
            self._reflection.serve(routes.upstream_of, _catalog(routes))

    async def set_health(self, service: str, status: int) -> None:
        if self.health is None:
            raise RuntimeError("OwnServices.register() comes before set_health()")
        await self.health.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
