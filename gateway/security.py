"""Everything the gateway needs to keep callers in line, loaded and checked at start-up.

``load_security`` reads keys (from the config, the environment or key files) and TLS files once,
before anything listens, raising ConfigError for anything unusable. The server then takes its
interceptors, listener credentials, upstream transports and size limits from the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from grpc_reflection.v1alpha import reflection

from gateway.access import Client, load_clients
from gateway.auth import Authenticator, AuthInterceptor
from gateway.config import GatewayConfig, Limits
from gateway.lockout import FailedAuthLockout
from gateway.metadata_check import MetadataCheckInterceptor
from gateway.routes import RouteTable
from gateway.tls import UpstreamTransport, server_credentials, upstream_transports
from runtime.introspection import HEALTH_SERVICE, REFLECTION_V1

REFLECTION_SERVICES = (reflection.SERVICE_NAME, REFLECTION_V1)

# The gateway's own methods. A key with an `allow` list may still call them: reflection describes
# only what is routed, and health says only whether it is up.
OWN_METHODS = (
    *(f"/{service}/ServerReflectionInfo" for service in REFLECTION_SERVICES),
    f"/{HEALTH_SERVICE}/Check",
    f"/{HEALTH_SERVICE}/Watch",
)


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC server options for the size limits."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        # gRPC refuses metadata between its soft and hard limits at random; equal limits make the
        # refusal certain, so that a call is either always accepted or always refused.
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
    ]


def public_services(config: GatewayConfig) -> list[str]:
    """Services of the gateway's own that need no key, as the config says."""
    public = [HEALTH_SERVICE] if config.health.public else []
    if config.reflection.enabled and config.reflection.public:
        public.extend(REFLECTION_SERVICES)
    return public


@dataclass(frozen=True)
class Security:
    config: GatewayConfig
    clients: dict[bytes, Client]
    # None: the listener is plaintext.
    server_credentials: grpc.ServerCredentials | None = None
    # By upstream address; an upstream not here is reached in plaintext.
    upstream_transports: dict[str, UpstreamTransport] = field(default_factory=dict)

    def authenticator(self) -> Authenticator:
        """The key checks, with a lockout of their own (a reload starts it afresh)."""
        lockout = FailedAuthLockout(self.config.auth.max_failures, self.config.auth.failure_window)
        return Authenticator(self.clients, public_services(self.config), lockout)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The checks that come before rate limiting, in order. Build inside the running event loop."""
        return [MetadataCheckInterceptor(), AuthInterceptor(self.authenticator())]

    @property
    def server_options(self) -> list[tuple[str, int]]:
        return server_options(self.config.limits)


def load_security(config: GatewayConfig, routes: RouteTable) -> Security:
    """Read and check keys and TLS files. Raises ConfigError naming the field (and file) at fault."""
    return Security(
        config=config,
        clients=load_clients(config.api_keys, routes, always_allowed=OWN_METHODS),
        server_credentials=server_credentials(config.tls),
        upstream_transports=upstream_transports(config.routes),
    )
