"""API-key authentication and per-client access control: the first policy every call meets.

A key is looked up by its SHA-256 digest, so the config may hold digests only and the lookup's
timing says nothing about how close a guess was. A known key calling a method its ``allow`` list
leaves out is PERMISSION_DENIED. Invalid keys count against the caller's address; an address
with too many is refused outright for a while (see ``gateway.lockout``).

Interceptors do not see the caller's address, so two paths: while no address is locked out (the
common case) a call costs a metadata scan and one dict lookup here; while some address is, each
call's handler is wrapped to look at its peer first, and to check the key only if it may.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from gateway import callstate, observe
from gateway.access import Client
from gateway.callstate import Continuation, Metadata
from gateway.keys import key_digest
from gateway.lockout import FailedAuthLockout
from gateway.peers import peer_address
from gateway.proxy import API_KEY_HEADER


@dataclass(frozen=True)
class AuthRefusal:
    code: grpc.StatusCode
    message: str
    # An invalid key is a guess; it counts against the caller's address. A missing key does not.
    is_failure: bool
    # The metrics label (grpc_gateway_auth_failures_total{reason}); see gateway.metrics.AUTH_FAILURE_REASONS.
    reason: str = "not_allowed"
    trailers: tuple[tuple[str, str], ...] = ()


_MISSING = AuthRefusal(
    grpc.StatusCode.UNAUTHENTICATED, f"missing {API_KEY_HEADER} metadata", False, "missing_key"
)
_INVALID = AuthRefusal(grpc.StatusCode.UNAUTHENTICATED, "invalid API key", True, "invalid_key")
_SEVERAL = AuthRefusal(
    grpc.StatusCode.UNAUTHENTICATED,
    f"more than one {API_KEY_HEADER} value; send exactly one",
    True,
    "several_keys",
)


def _shortened(method: str, limit: int = 200) -> str:
    """The method path as a refusal names it: a caller's path can be as long as metadata allows."""
    return method if len(method) <= limit else method[:limit] + "…"


def _locked_out(seconds: float) -> AuthRefusal:
    return AuthRefusal(
        grpc.StatusCode.UNAUTHENTICATED,
        f"too many invalid API keys from this address; try again in {math.ceil(seconds)} s",
        False,
        "locked_out",
        (("retry-after", str(math.ceil(seconds))),),
    )


class Authenticator:
    """Who a call is from, and whether it may go on: the decisions of both engines.

    Services in ``public_services`` (the gateway's own health service, say) need no key.
    """

    def __init__(
        self,
        clients: Mapping[bytes, Client],
        public_services: Iterable[str],
        lockout: FailedAuthLockout,
    ) -> None:
        self._clients = dict(clients)
        self._public_prefixes = tuple(f"/{service}/" for service in public_services)
        self.lockout = lockout

    def is_public(self, method: str) -> bool:
        return method.startswith(self._public_prefixes)

    def verify(self, method: str, metadata: Metadata | None) -> Client | AuthRefusal:
        """The key's client, or why the call is refused; the caller's address is not looked at."""
        keys = [value for name, value in metadata or () if name == API_KEY_HEADER]
        if not keys:
            return _MISSING
        if len(keys) > 1:
            return _SEVERAL
        client = self._clients.get(key_digest(keys[0]))
        if client is None:
            return _INVALID
        if not client.may_call(method):
            return AuthRefusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {client.name} may not call {_shortened(method)}",
                False,
            )
        return client

    def admit(self, method: str, metadata: Metadata | None, peer: Callable[[], str]) -> Client | AuthRefusal:
        """``verify`` for the caller at grpc's ``peer()``: refused unseen while its address is locked
        out, and a guess counts against it."""
        if self.lockout.any_locked():
            locked_for = self.lockout.locked_for(peer_address(peer()))
            if locked_for > 0:
                return _locked_out(locked_for)
        verdict = self.verify(method, metadata)
        if isinstance(verdict, AuthRefusal) and verdict.is_failure:
            self.lockout.record_failure(peer_address(peer()))
        return verdict


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Maps ``x-api-key`` to a client, or refuses the call with UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator
        self._refusals = {
            refusal: self._refusal_handler(refusal) for refusal in (_MISSING, _INVALID, _SEVERAL)
        }

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if self._auth.is_public(method):
            return await continuation(handler_call_details)
        if self._auth.lockout.any_locked():
            handler = await continuation(handler_call_details)
            return None if handler is None else self._checked_per_peer(handler, handler_call_details)
        verdict = self._auth.verify(method, handler_call_details.invocation_metadata)
        if isinstance(verdict, AuthRefusal):
            return self._refusals.get(verdict) or self._refusal_handler(verdict)
        callstate.client_name.set(verdict.name)
        return await continuation(handler_call_details)

    def _refusal_handler(self, refusal: AuthRefusal) -> grpc.RpcMethodHandler:
        """A handler that refuses every call, counting it against the caller when it is a failure.

        Stream-stream suits a method of any kind: a streaming client is never left waiting for
        the handler to read a request.
        """

        async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            if refusal.is_failure:
                self._auth.lockout.record_failure(peer_address(context.peer()))
            await observe.current().auth_failed(context, refusal.reason)
            await context.abort(refusal.code, refusal.message)

        return grpc.stream_stream_rpc_method_handler(refuse)

    async def _admit(self, details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext) -> None:
        """The per-peer check: a locked-out address is refused before its key is looked at."""
        verdict = self._auth.admit(details.method, details.invocation_metadata, context.peer)
        if isinstance(verdict, AuthRefusal):
            await observe.current().auth_failed(context, verdict.reason)
            await context.abort(verdict.code, verdict.message, verdict.trailers)
        else:
            callstate.client_name.set(verdict.name)

    def _checked_per_peer(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._admitting(behavior, details)})
        return handler

    def _admitting(
        self, behavior: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        # Keep the behaviour's own shape: grpc.aio treats async generators and coroutines differently.
        if inspect.isasyncgenfunction(behavior):

            async def admitted_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await self._admit(details, context)
                async for reply in behavior(request, context):
                    yield reply

            return admitted_stream

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(details, context)
            return await behavior(request, context)

        return admitted
