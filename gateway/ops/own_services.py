"""The gateway's own services, listed once: health and reflection (``v1`` and ``v1alpha``).

Both are grpc.aio servicers. The engine decides where they are served (on its listener, or on a
private socket behind it); the gateway sets health statuses and swaps reflection's answers on a
reload through this one object, whichever engine runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.call.metadata import API_KEY_HEADER, CLIENT_ID_HEADER
from gateway.call.step import Call
from gateway.config.schema import GatewayConfig
from gateway.routing.table import RouteTable
from runtime.descriptors import DescriptorCatalog
from runtime.introspection import (
    HEALTH_SERVICE,
    REFLECTION_V1,
    CatalogReflectionServicer,
    add_health,
    add_reflection_behavior,
)

REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_SERVICES = (REFLECTION_V1ALPHA, REFLECTION_V1)
REFLECTION_PATHS = frozenset(f"/{name}/ServerReflectionInfo" for name in REFLECTION_SERVICES)


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


def _keyless_reflection(config: GatewayConfig) -> bool:
    """Whether a caller without credentials may ask reflection (for what needs none): so that
    ``grpcurl HOST:PORT grpc.health.v1.Health/Check``, which resolves the method by reflection first,
    works without a key, as operators type it."""
    return config.reflection.enabled and not config.reflection.public and config.health.public


def keyless_paths(config: GatewayConfig) -> frozenset[str]:
    """The gateway's own paths a call with no credential at all may call, besides public services."""
    if not _keyless_reflection(config):
        return frozenset()
    return REFLECTION_PATHS


class KeylessReflection(CatalogReflectionServicer):
    """Reflection for a caller without credentials: the services that need none (health, and
    reflection itself). Any other name gets the same answer, whether it exists or not: send
    credentials."""

    def __init__(self, hint: str) -> None:
        super().__init__((), DescriptorCatalog())
        self._hint = hint

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        reply = super()._file_by_filename(request, filename)
        return self._withheld(request, filename) if reply.HasField("error_response") else reply

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        reply = super()._file_containing_symbol(request, fully_qualified_name)
        return self._withheld(request, fully_qualified_name) if reply.HasField("error_response") else reply

    def _withheld(self, request: Any, name: str) -> Any:
        return reflection_pb2.ServerReflectionResponse(
            error_response=reflection_pb2.ErrorResponse(
                error_code=grpc.StatusCode.UNAUTHENTICATED.value[0],
                error_message=f"{name[:200]} is described only to callers with credentials: {self._hint}",
            ),
            original_request=request,
        )


def _catalog(routes: RouteTable) -> DescriptorCatalog:
    # Clients such as grpcurl resolve the rich error details of refusals through reflection.
    routes.catalog.add_compiled(error_details_pb2.DESCRIPTOR)
    return routes.catalog


class OwnServices:
    """Health (overall, and per routed service) and reflection for the routed services."""

    def __init__(self, config: GatewayConfig, routes: RouteTable) -> None:
        self._reflects = config.reflection.enabled
        self._public_reflection = config.reflection.public
        self._routes = routes
        self.health: health.aio.HealthServicer | None = None
        self._reflection: CatalogReflectionServicer | None = None
        hint = f"send {API_KEY_HEADER} metadata" + (" or a token" if config.auth.jwt else "")
        self._keyless = KeylessReflection(hint)

    def register(self, server: grpc.aio.Server) -> None:
        """Serve them on ``server`` (before it starts)."""
        self.health = add_health(server)
        if self._reflects:
            self._reflection = CatalogReflectionServicer(self._routes.upstream_of, _catalog(self._routes))
            add_reflection_behavior(server, self._reflection_by_metadata)

    def _reflection_for(self, client: str | None) -> CatalogReflectionServicer:
        if self._reflection is None:
            raise RuntimeError("OwnServices.register() comes before reflection is served")
        return self._reflection if client or self._public_reflection else self._keyless

    async def _reflection_by_metadata(
        self, requests: AsyncIterable[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # The native engine's private socket: the gateway hands each call on with the x-client-id it
        # set itself (a caller's own is never forwarded), empty for a caller without credentials.
        client = next((v for k, v in context.invocation_metadata() or () if k == CLIENT_ID_HEADER), "")
        async for reply in self._reflection_for(str(client)).ServerReflectionInfo(requests, context):
            yield reply

    async def serve_reflection(self, requests: Any, context: grpc.aio.ServicerContext, facts: Call) -> None:
        """Reflection for a call the aio engine admitted, by the client its chain found (the
        caller's metadata is its own there, x-client-id included)."""
        async for reply in self._reflection_for(facts.client).ServerReflectionInfo(requests, context):
            await context.write(reply)

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
