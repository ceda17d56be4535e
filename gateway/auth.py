"""API-key authentication: the first interceptor every call meets."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable

import grpc

from gateway import callstate
from gateway.config import ApiKey
from gateway.proxy import API_KEY_HEADER
from gateway.rejections import rejection

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def key_digest(key: str | bytes) -> bytes:
    """Keys are looked up by SHA-256 digest: a lookup takes no time that depends on a near-miss."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``x-api-key`` to a client name, or refuses the call with UNAUTHENTICATED.

    Services in ``public_services`` (the gateway's own health service, say) need no key.
    """

    def __init__(self, keys: Iterable[ApiKey], public_services: Iterable[str]) -> None:
        self._clients = {key_digest(k.key.get_secret_value()): k.client for k in keys}
        self._public_prefixes = tuple(f"/{service}/" for service in public_services)
        self._missing = rejection(grpc.StatusCode.UNAUTHENTICATED, f"missing {API_KEY_HEADER} metadata")
        self._invalid = rejection(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(self._public_prefixes):
            return await continuation(handler_call_details)
        keys = [v for k, v in handler_call_details.invocation_metadata or () if k == API_KEY_HEADER]
        if not keys:
            return self._missing
        client = self._clients.get(key_digest(keys[0])) if len(keys) == 1 else None
        if client is None:
            return self._invalid
        callstate.client_name.set(client)
        return await continuation(handler_call_details)
