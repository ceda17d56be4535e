"""The routing table: which upstream serves each routed service, and the shape of each method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from gateway.config.schema import ConfigError, GatewayConfig, Route
from runtime.descriptors import DescriptorCatalog, DescriptorSetError, builtin_catalog


@dataclass(frozen=True)
class MethodRoute:
    """One method of a routed service, as the proxy and the rate limiter need to know it."""

    path: str  # /package.Service/Method, as in the call
    service: str
    upstream: str
    client_streaming: bool
    server_streaming: bool
    request_type: type[Message]
    # Seconds the call may take when the caller sets no deadline (the route's default_timeout).
    default_timeout: float | None = None

    @property
    def kind(self) -> str:
        """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``, as grpc names them."""
        requests = "stream" if self.client_streaming else "unary"
        return f"{requests}_{'stream' if self.server_streaming else 'unary'}"


@dataclass(frozen=True)
class RouteTable:
    catalog: DescriptorCatalog
    methods: dict[str, MethodRoute]
    upstream_of: dict[str, str]  # full service name -> upstream address

    def method_names(self, service: str) -> list[str]:
        prefix = f"/{service}/"
        return [path.removeprefix(prefix) for path in self.methods if path.startswith(prefix)]


def load_catalog(config: GatewayConfig) -> DescriptorCatalog:
    """This project's descriptors plus every descriptor set named in the config."""
    extra: list[tuple[bytes, str]] = []
    for index, path in enumerate(config.descriptor_sets):
        try:
            extra.append((Path(path).read_bytes(), str(path)))
        except OSError as error:
            raise ConfigError(f"descriptor_sets[{index}]: cannot read {path} ({error.strerror})") from None
    try:
        return builtin_catalog(extra)
    except DescriptorSetError as error:
        raise ConfigError(f"descriptor_sets: {error}") from None


def build_routes(config: GatewayConfig, catalog: DescriptorCatalog) -> RouteTable:
    """Resolve every route against the descriptors. Raises ConfigError for an unknown service."""
    methods: dict[str, MethodRoute] = {}
    for index, route in enumerate(config.routes):
        service = catalog.find_service(route.service)
        if service is None:
            raise ConfigError(
                f"routes[{index}].service: no descriptor for {route.service!r}; "
                "add a FileDescriptorSet that defines it to descriptor_sets"
            )
        _check_retried_methods(index, route, service)
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            methods[path] = MethodRoute(
                path=path,
                service=service.full_name,
                upstream=route.upstream,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                request_type=message_factory.GetMessageClass(method.input_type),
                default_timeout=route.default_timeout,
            )
    upstream_of = {route.service: route.upstream for route in config.routes}
    return RouteTable(catalog=catalog, methods=methods, upstream_of=upstream_of)


def _check_retried_methods(index: int, route: Route, service: ServiceDescriptor) -> None:
    if route.retry is None:
        return
    names = [method.name for method in service.methods]
    for position, name in enumerate(route.retry.methods):
        if name not in names:
            raise ConfigError(
                f"routes[{index}].retry.methods[{position}]: {service.full_name} has no method {name!r} "
                f"(it has: {', '.join(names)})"
            )
