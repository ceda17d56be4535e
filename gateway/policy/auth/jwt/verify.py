"""Is this token good: its issuer, its key, its signature and its claims, checked by PyJWT.

The signature is checked by PyJWT with the key the token's ``kid`` names in its issuer's JWKS
(or the issuer's HS256 secret), and only with an algorithm both the provider accepts and the key
fits, so ``alg: none`` and an HS256 token "signed" with an RSA public key are refused before any
key is used. Then PyJWT checks ``exp``, ``nbf``, ``iat`` (each with the provider's clock skew),
``iss`` and ``aud``. A good token is cached by its SHA-256 digest until it expires, and is good
from the cache while the key that signed it is still published and not stale.

Every refusal says what is wrong in words a caller can act on, and never shows the token: values
from it (issuer, audience, key id) are shown cut short and in printable ASCII.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from gateway.policy.auth.authenticator import AuthRefusal
from gateway.policy.auth.jwt.cache import TokenCache
from gateway.policy.auth.jwt.claims import claim_at, forwarded_claims
from gateway.policy.auth.jwt.jwks import KeySet, SigningKey

if TYPE_CHECKING:
    import jwt

# Longer tokens are refused unread (a default gRPC metadata limit, 8 KiB, refuses them earlier).
MAX_TOKEN_BYTES = 16 * 1024
# The longest client name a token's client claim may give (it travels as x-client-id).
MAX_CLIENT_NAME = 256

# What a quoted-string (RFC 9110) would need escaped: never sent, so nothing is.
_QUOTED_STRING_SPECIALS = '"\\'
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_MALFORMED = "token is not a well-formed JWT (header.payload.signature, base64url JSON)"


def shown(value: Any, limit: int = 80, quotes: str = "\"\\'") -> str:
    """A value from a caller's token as a refusal may show it: printable ASCII, none of ``quotes``, short."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(c if c.isascii() and c.isprintable() and c not in quotes else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def bearer_challenge(error: str | None, description: str = "") -> tuple[tuple[str, str], ...]:
    """The ``www-authenticate`` trailer of a token refusal (RFC 6750), a header on the HTTP door."""
    if error is None:
        return (("www-authenticate", "Bearer"),)
    text = shown(description, 300, quotes=_QUOTED_STRING_SPECIALS)
    return (("www-authenticate", f'Bearer error="{error}", error_description="{text}"'),)


def token_refusal(message: str, reason: str) -> AuthRefusal:
    """UNAUTHENTICATED for a token that is not good, with its challenge."""
    return AuthRefusal(
        grpc.StatusCode.UNAUTHENTICATED, message, False, reason, bearer_challenge("invalid_token", message)
    )


def _keys_unavailable(message: str) -> AuthRefusal:
    # The token may well be good: the gateway cannot tell now. Not the caller's fault.
    return AuthRefusal(grpc.StatusCode.UNAVAILABLE, message, False, "keys_unavailable")


class Issuer:
    """One ``[[auth.jwt]]`` provider, ready to verify its tokens: keys from ``keys`` or ``secret``."""

    def __init__(
        self,
        name: str,
        audiences: tuple[str, ...],
        algorithms: frozenset[str],
        clock_skew: float,
        token_from: str,
        client_claim: str,
        forward_claims: tuple[str, ...],
        forward_token: bool,
        keys: KeySet | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.name = name
        self.audiences = audiences
        self.algorithms = algorithms
        self.clock_skew = clock_skew
        self.token_from = token_from
        self.client_claim = client_claim
        self.forward_claims = forward_claims
        self.forward_token = forward_token
        self.keys = keys
        self.secret = secret


@dataclass(frozen=True, eq=False)
class VerifiedToken:
    """A good token: whose it is, its claims and what goes upstream for it, and until when it is good."""

    issuer: Issuer
    key: SigningKey | None  # None: the issuer's secret
    client: str
    claims: Mapping[str, Any]
    forwarded: tuple[tuple[str, str], ...]  # x-jwt-* metadata
    expires: float  # epoch seconds: exp plus the clock skew

    def still_good(self, now: float) -> bool:
        keys = self.issuer.keys
        if keys is None or self.key is None:
            return True
        current = keys.keys
        return now < keys.stale_at and current is not None and current.holds(self.key)


class TokenVerifier:
    """Every configured issuer's tokens, and the tokens already verified."""

    def __init__(self, issuers: tuple[Issuer, ...], cache: TokenCache[VerifiedToken] | None = None) -> None:
        self.issuers = {issuer.name: issuer for issuer in issuers}
        self.headers = frozenset(issuer.token_from for issuer in issuers)
        # Seconds a call whose token names a new key id waits for the fetch of its issuer's keys.
        self.fetch_wait = 1.0 + max(
            (issuer.keys.timing.timeout for issuer in issuers if issuer.keys is not None), default=0.0
        )
        self._cache: TokenCache[VerifiedToken] = cache if cache is not None else TokenCache()

    def verify(
        self, header: str, token: str, may_wait: bool = True
    ) -> VerifiedToken | AuthRefusal | Future[None]:
        """The token found in metadata ``header``, verified; or why not; or, when its key id is new
        to its issuer and ``may_wait``, the fetch of the issuer's keys to wait for before asking again."""
        if len(token) > MAX_TOKEN_BYTES:
            return token_refusal(
                f"token is {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted", "invalid_token"
            )
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._cache.get(digest, now)
        if cached is not None and cached.still_good(now) and cached.issuer.token_from == header:
            return cached
        return self._verify(header, token, digest, now, may_wait)

    def _verify(
        self, header: str, token: str, digest: bytes, now: float, may_wait: bool
    ) -> VerifiedToken | AuthRefusal | Future[None]:
        unverified = _unverified(token)
        if unverified is None:
            return token_refusal(_MALFORMED, "invalid_token")
        head, payload = unverified
        issuer_name = payload.get("iss")
        if issuer_name is None:
            return token_refusal("token has no issuer (iss)", "token_issuer")
        issuer = self.issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if issuer is None:
            return token_refusal(f"token issuer '{shown(issuer_name)}' is not configured", "token_issuer")
        if issuer.token_from != header:
            return token_refusal(
                f"tokens of issuer '{issuer.name}' come in {issuer.token_from} metadata, not {header}",
                "token_issuer",
            )
        algorithm = head.get("alg")
        if algorithm not in issuer.algorithms:
            accepted = ", ".join(sorted(issuer.algorithms))
            return token_refusal(
                f"token algorithm '{shown(algorithm)}' is not accepted for issuer '{issuer.name}' "
                f"(accepted: {accepted})",
                "invalid_token",
            )
        candidates = self._keys_for(issuer, head, algorithm, now, may_wait)
        if not isinstance(candidates, list):
            return candidates
        return self._checked(issuer, token, digest, payload, algorithm, candidates, now)

    def _keys_for(
        self, issuer: Issuer, head: Mapping[str, Any], algorithm: str, now: float, may_wait: bool
    ) -> list[tuple[SigningKey | None, Any]] | AuthRefusal | Future[None]:
        """The keys to try: the one the token's kid names, or every key that fits its algorithm."""
        key_set = issuer.keys
        if key_set is None:
            return [(None, issuer.secret)]
        keys = key_set.keys
        if keys is None:
            pending = key_set.fetch_soon() if may_wait else None
            if pending is not None:
                return pending
            return _keys_unavailable(
                f"no keys of issuer '{issuer.name}' yet: its JWKS cannot be fetched now; try again later"
            )
        if now >= key_set.stale_at:
            return _keys_unavailable(
                f"the keys of issuer '{issuer.name}' are {round(key_set.age())} s old and cannot be "
                "refreshed now; try again later"
            )
        kid = head.get("kid")
        if kid is None:
            fitting: list[tuple[SigningKey | None, Any]] = [
                (key, key.key) for key in keys.every if algorithm in key.algorithms
            ]
            if not fitting:
                return token_refusal(
                    f"token names no key id (kid), and no key of issuer '{issuer.name}' takes {algorithm}",
                    "unknown_key_id",
                )
            return fitting
        key = keys.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            pending = key_set.fetch_soon() if may_wait else None
            if pending is not None:
                return pending
            refreshed = round(key_set.age())
            return token_refusal(
                f"token signed with unknown key id '{shown(kid)}' (keys refreshed {refreshed} s ago)",
                "unknown_key_id",
            )
        if algorithm not in key.algorithms:
            return token_refusal(
                f"token algorithm '{algorithm}' does not fit key '{shown(kid)}' of issuer '{issuer.name}' "
                f"(it takes {', '.join(sorted(key.algorithms))})",
                "invalid_token",
            )
        return [(key, key.key)]

    def _checked(
        self,
        issuer: Issuer,
        token: str,
        digest: bytes,
        payload: Mapping[str, Any],
        algorithm: str,
        candidates: list[tuple[SigningKey | None, Any]],
        now: float,
    ) -> VerifiedToken | AuthRefusal:
        """PyJWT's verdict on the signature with each candidate key in turn, then on the claims."""
        # Imported here: only a gateway with [[auth.jwt]] providers loads PyJWT (see providers.py).
        import jwt

        for number, (signing_key, key) in enumerate(candidates, 1):
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=list(issuer.audiences),
                    issuer=issuer.name,
                    leeway=issuer.clock_skew,
                    options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
                )
            except jwt.InvalidSignatureError:
                if number < len(candidates):
                    continue
                return token_refusal(
                    f"token signature is not valid for issuer '{issuer.name}'", "invalid_token"
                )
            except jwt.PyJWTError as error:
                # Claims are checked after the signature: what they say is the issuer's word.
                return _claims_refusal(error, payload, issuer, now)
            return self._verified(issuer, signing_key, digest, claims, now)
        raise AssertionError("no candidate key")  # _keys_for returns at least one

    def _verified(
        self, issuer: Issuer, key: SigningKey | None, digest: bytes, claims: dict[str, Any], now: float
    ) -> VerifiedToken | AuthRefusal:
        client = claim_at(claims, issuer.client_claim)
        if not (
            isinstance(client, str)
            and client
            and len(client) <= MAX_CLIENT_NAME
            and client.isascii()
            and client.isprintable()
            and client == client.strip()
        ):
            return token_refusal(
                f"token claim {issuer.client_claim} must be a printable ASCII string: it names the client",
                "invalid_token",
            )
        expires = float(claims["exp"]) + issuer.clock_skew
        verified = VerifiedToken(
            issuer, key, client, claims, forwarded_claims(claims, issuer.forward_claims), expires
        )
        self._cache.put(digest, verified, expires, now)
        return verified


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The token's header and claims, unverified: only to find its issuer and key, which then verify
    it (PyJWT parses it again, strictly). Parsed here at C speed: PyJWT's parse costs more than the
    RSA signature check."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts[:2]):
        return None
    try:
        head, claims = (
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2]
        )
    except (ValueError, binascii.Error):
        return None
    return (head, claims) if isinstance(head, dict) and isinstance(claims, dict) else None


def _claims_refusal(
    error: jwt.PyJWTError, payload: Mapping[str, Any], issuer: Issuer, now: float
) -> AuthRefusal:
    import jwt

    if isinstance(error, jwt.ExpiredSignatureError):
        ago = max(1, math.floor(now - float(payload["exp"])))
        return token_refusal(f"token expired {ago} s ago", "token_expired")
    if isinstance(error, jwt.ImmatureSignatureError):
        nbf = payload.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + issuer.clock_skew:
            wait = math.ceil(nbf - now)
            return token_refusal(f"token is not valid for another {wait} s (nbf)", "token_not_yet_valid")
        ahead = math.ceil(float(payload.get("iat", now)) - now)
        return token_refusal(
            f"token was issued {ahead} s in the future (iat); check the issuer's clock", "token_not_yet_valid"
        )
    expected = ", ".join(f"'{audience}'" for audience in issuer.audiences)
    if isinstance(error, jwt.MissingRequiredClaimError):
        if error.claim == "aud":
            return token_refusal(f"token has no audience (aud); expected one of {expected}", "token_audience")
        return token_refusal(f"token has no {error.claim} claim", "invalid_token")
    if isinstance(error, jwt.InvalidAudienceError):
        audience = payload.get("aud")
        given = audience if isinstance(audience, list) else [audience]
        named = ", ".join(f"'{shown(item)}'" for item in given[:5])
        verb = "is" if len(given) == 1 else "are"
        return token_refusal(f"token audience {named} {verb} not one of {expected}", "token_audience")
    if isinstance(error, jwt.InvalidKeyError):
        return token_refusal(f"the key of issuer '{issuer.name}' is not usable ({error})", "invalid_token")
    # PyJWT's words for a claim of the wrong type ("Expiration Time claim (exp) must be an integer.").
    return token_refusal(f"token is not valid: {shown(str(error), 120)}", "invalid_token")
