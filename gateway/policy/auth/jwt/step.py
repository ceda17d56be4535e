"""The token half of the chain's ``auth`` step: the call's JWT, verified, and the method's claim rules.

A good token sets the call's client (its client claim), its claims (for rate-limit keys such as
``claim:tenant``) and the ``x-jwt-*`` metadata of the claims the provider forwards; the token
itself is not forwarded unless the provider says ``forward_token``. A token from the cache costs
a metadata scan, a SHA-256 and a dict lookup. When the token's key id is new to its issuer, the
call waits (on the event loop) for the fetch of the issuer's keys, which that asks for, and is
checked again once it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Future

import grpc

from gateway.call.metadata import API_KEY_HEADER
from gateway.call.step import Call, Metadata, Refusal, Wait
from gateway.policy.auth.authenticator import AuthRefusal
from gateway.policy.auth.jwt.claims import ClaimTest
from gateway.policy.auth.jwt.verify import (
    Issuer,
    TokenVerifier,
    VerifiedToken,
    bearer_challenge,
    token_refusal,
)

# The metadata a Bearer token comes in by default (RFC 6750); the value is "Bearer <token>".
BEARER_HEADER = "authorization"
_BEARER = "bearer "

_NOT_BEARER = token_refusal(
    f"{BEARER_HEADER} metadata is not a Bearer token; send '{BEARER_HEADER}: Bearer <token>'", "invalid_token"
)
_SEVERAL = token_refusal("more than one token in the call's metadata; send exactly one", "invalid_token")
_MALFORMED = token_refusal("the token is empty or not text", "invalid_token")


def _how_to_send(headers: frozenset[str]) -> str:
    if headers == {BEARER_HEADER}:
        return f"'{BEARER_HEADER}: Bearer <token>'"
    return "a token in " + " or ".join(sorted(headers)) + " metadata"


def missing_token(headers: frozenset[str], keys_accepted: bool) -> AuthRefusal:
    """The refusal of a call with no token (nor, when keys are accepted too, a key)."""
    if keys_accepted:
        message = f"missing credentials: send {API_KEY_HEADER} metadata or {_how_to_send(headers)}"
        reason = "missing_credentials"
    else:
        message = f"missing token: send {_how_to_send(headers)}"
        reason = "missing_token"
    return AuthRefusal(grpc.StatusCode.UNAUTHENTICATED, message, False, reason, bearer_challenge(None))


class MethodTokens:
    """The token check of one method: the verifier, and the claim rules of each issuer for it."""

    name = "auth"

    def __init__(
        self,
        verifier: TokenVerifier,
        method: str | None,
        rules: Mapping[Issuer, tuple[ClaimTest, ...]],
        keys_accepted: bool,
    ) -> None:
        self._verifier = verifier
        self._method = method or "this method"
        self._rules = rules
        self._headers = verifier.headers
        self._missing = missing_token(verifier.headers, keys_accepted)
        # A key sent where tokens only are taken: say so rather than "missing token".
        self._keys_refused = (
            None
            if keys_accepted
            else AuthRefusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{self._method} takes tokens, not API keys: send {_how_to_send(verifier.headers)}",
                False,
                "missing_token",
                bearer_challenge(None),
            )
        )

    def check(self, call: Call) -> Refusal | Wait | None:
        found = self._token(call.metadata)
        if isinstance(found, AuthRefusal):
            return self._refused(call, found)
        header, token = found
        verdict = self._verifier.verify(header, token)
        if isinstance(verdict, Future):
            return Wait(self._after_fetch(call, header, token, verdict))
        return self._decided(call, verdict)

    async def _after_fetch(self, call: Call, header: str, token: str, fetch: Future[None]) -> Refusal | None:
        try:
            async with asyncio.timeout(self._verifier.fetch_wait):
                await asyncio.wrap_future(fetch)
        except TimeoutError:
            pass  # checked again all the same: the key is still unknown, and the call is told so
        verdict = self._verifier.verify(header, token, may_wait=False)
        if isinstance(verdict, Future):
            raise AssertionError("a token check that may not wait waited")
        return self._decided(call, verdict)

    def _decided(self, call: Call, verdict: VerifiedToken | AuthRefusal) -> Refusal | None:
        if isinstance(verdict, AuthRefusal):
            return self._refused(call, verdict)
        for rule in self._rules.get(verdict.issuer, ()):
            if not rule.passes(verdict.claims):
                call.auth_failure = "token_claims"
                message = f"client {verdict.client} may not call {self._method}: the token's {rule.wanted}"
                return Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    message,
                    bearer_challenge("insufficient_scope", message),
                )
        call.client = verdict.client
        call.claims = verdict.claims
        if verdict.forwarded:
            call.to_upstream = (*call.to_upstream, *verdict.forwarded)
        if not verdict.issuer.forward_token:
            call.withheld = (verdict.issuer.token_from,)
        return None

    @staticmethod
    def _refused(call: Call, refusal: AuthRefusal) -> Refusal:
        call.auth_failure = refusal.reason
        return refusal.refusal

    def _token(self, metadata: Metadata) -> tuple[str, str] | AuthRefusal:
        """The one token in the call's metadata, and the header it came in."""
        headers = self._headers
        found = [(name, value) for name, value in metadata if name in headers]
        if not found:
            if self._keys_refused is not None and any(name == API_KEY_HEADER for name, _ in metadata):
                return self._keys_refused
            return self._missing
        if len(found) > 1:
            return _SEVERAL
        name, value = found[0]
        if not isinstance(value, str):
            return _MALFORMED
        if value[:7].lower() == _BEARER:
            value = value[7:]
        elif name == BEARER_HEADER:
            return _NOT_BEARER
        token = value.strip()
        return (name, token) if token else _MALFORMED


class TokenAuth:
    """The token check of every method: each method's claim rules, decided once per config."""

    def __init__(self, verifier: TokenVerifier, rules: Mapping[str, Mapping[Issuer, tuple[ClaimTest, ...]]]):
        """``rules``: by method path, each issuer's claim rules for it (a path not there has none)."""
        self.verifier = verifier
        self._rules = rules

    def for_method(self, path: str | None, keys_accepted: bool) -> MethodTokens:
        rules = self._rules.get(path, {}) if path is not None else {}
        return MethodTokens(self.verifier, path, rules, keys_accepted)
