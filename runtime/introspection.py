"""Health checking and server reflection, registered the same way on every server we run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from runtime.descriptors import DescriptorCatalog, builtin_catalog

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """Register grpc.health.v1.Health; the caller sets each service's status."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


class CatalogReflectionServicer(ReflectionServicer):
    """Reflection that answers with the catalogue's original file protos, comments included."""

    def __init__(self, service_names: Iterable[str], catalog: DescriptorCatalog) -> None:
        super().__init__((), pool=catalog.pool)
        self.serve(service_names, catalog)

    def serve(self, service_names: Iterable[str], catalog: DescriptorCatalog) -> None:
        """Describe ``service_names`` (and health and reflection) from ``catalog`` from now on."""
        catalog.add_compiled(health_pb2.DESCRIPTOR)
        catalog.add_compiled(reflection_pb2.DESCRIPTOR)
        self._service_names = tuple(sorted({*service_names, reflection.SERVICE_NAME, HEALTH_SERVICE}))
        self._pool = catalog.pool
        self._catalog = catalog

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        try:
            file = self._catalog.pool.FindFileByName(filename)
        except KeyError:
            return super()._file_by_filename(request, filename)
        return self._reply(request, file)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            file = self._catalog.pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            return super()._file_containing_symbol(request, fully_qualified_name)
        return self._reply(request, file)

    def _reply(self, request: Any, file: Any) -> Any:
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=self._catalog.file_protos(file)
            ),
            original_request=request,
        )


def add_reflection(
    server: grpc.aio.Server,
    service_names: Iterable[str],
    catalog: DescriptorCatalog | None = None,
) -> CatalogReflectionServicer:
    """Serve reflection for ``service_names`` under both ``v1alpha`` and ``v1``.

    grpcio-reflection only registers ``v1alpha``, but grpcurl and newer clients ask for ``v1``
    first. The two protocols are identical on the wire, so one servicer answers both names.
    ``catalog`` defaults to this project's own services.
    """
    servicer = CatalogReflectionServicer(service_names, catalog or builtin_catalog())
    add_reflection_behavior(server, servicer.ServerReflectionInfo)
    return servicer


def add_reflection_behavior(server: grpc.aio.Server, behavior: Any) -> None:
    """Serve ``behavior`` (a ``ServerReflectionInfo``: request iterator and context in, replies out)
    under both reflection names."""
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            behavior,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_registered_method_handlers(name, handlers)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
