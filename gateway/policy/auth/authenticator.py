"""API-key authentication and per-client access control: the first policy every call meets.

A key is looked up by its SHA-256 digest, so the config may hold digests only and the lookup's
timing says nothing about how close a guess was. A known key calling a method its ``allow`` list
leaves out is PERMISSION_DENIED. Invalid keys count against the caller's address; an address
with too many is refused outright for a while (see ``gateway.policy.auth.lockout``).

While no address is locked out (the common case) a call costs a metadata scan and one dict
lookup; the caller's address is looked up only while some address is locked out, or for a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from gateway.call.metadata import API_KEY_HEADER
from gateway.call.peers import peer_address
from gateway.call.step import Call, Metadata, Refusal
from gateway.config.keys import key_digest
from gateway.policy.auth.clients import Client
from gateway.policy.auth.lockout import FailedAuthLockout


@dataclass(frozen=True)
class AuthRefusal:
    code: grpc.StatusCode
    message: str
    # An invalid key is a guess; it counts against the caller's address. A missing key does not.
    is_failure: bool
    # The metrics label (grpc_gateway_auth_failures_total{reason}); see AUTH_FAILURE_REASONS in
    # gateway/ops/metrics.py.
    reason: str = "not_allowed"
    trailers: tuple[tuple[str, str], ...] = ()
    refusal: Refusal = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "refusal", Refusal(self.code, self.message, self.trailers))


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


class ApiKeyAuth:
    """The chain's ``auth`` step: the call's client from its key, or the refusal; public services pass."""

    name = "auth"

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def for_method(self, path: str | None) -> ApiKeyAuth | None:
        return None if path is not None and self._auth.is_public(path) else self

    def check(self, call: Call) -> Refusal | None:
        verdict = self._auth.admit(call.method, call.metadata, call.peer)
        if isinstance(verdict, AuthRefusal):
            call.auth_failure = verdict.reason
            return verdict.refusal
        call.client = verdict.name
        return None
