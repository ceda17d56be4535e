"""``[[auth.jwt]]`` providers → the token check and the key sets it reads, built with each plan.

Key sets outlive a plan when a reload leaves their provider's keys as they were (same issuer,
source, algorithms, timing and cache file): the new plan goes on with the keys already fetched,
and their refresh thread, instead of fetching them again.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.schema import ConfigError, GatewayConfig, JwtProvider
from gateway.policy.auth.clients import named_methods
from gateway.policy.auth.jwt.claims import ClaimTest, forwarded_header
from gateway.policy.auth.jwt.jwks import (
    DiscoveredSource,
    FileSource,
    JwksWatcher,
    KeySet,
    KeySource,
    Timing,
    UrlSource,
)
from gateway.policy.auth.jwt.step import TokenAuth
from gateway.policy.auth.jwt.verify import Issuer, TokenVerifier
from gateway.routing.table import RouteTable

# HS256 compares a SHA-256 HMAC: a shorter secret is weaker than the hash (RFC 7518, 3.2).
MIN_SECRET_BYTES = 32
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")


@dataclass(frozen=True)
class TokenKeys:
    """The key sets of a plan's issuers (none: no JWKS provider)."""

    sets: tuple[KeySet, ...] = ()

    def start(self) -> None:
        """Fetch every issuer's keys, and keep them fresh, each on a thread of its own."""
        for key_set in self.sets:
            key_set.start()

    async def ready(self, within: float | None = None) -> list[str]:
        """Wait until every set has keys (fetched, or from disk), at most ``within`` seconds (None:
        as long as it takes); the issuers still without keys then."""
        waiting = [asyncio.wrap_future(key_set.ready) for key_set in self.sets if not key_set.ready.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=within)
        return [key_set.issuer for key_set in self.sets if not key_set.ready.done()]

    def watch(self, watcher: JwksWatcher | None) -> None:
        for key_set in self.sets:
            key_set.watch(watcher)

    def retire(self, successor: TokenKeys) -> None:
        """Stop the sets ``successor`` (the next plan's) does not go on with."""
        for key_set in self.sets:
            if not any(key_set is kept for kept in successor.sets):
                key_set.stop()

    def stop(self) -> None:
        self.retire(TokenKeys())


def _source(provider: JwtProvider) -> KeySource:
    if provider.jwks is None:
        return DiscoveredSource(provider.issuer)
    if provider.jwks.startswith(("http://", "https://")):
        return UrlSource(provider.jwks)
    return FileSource(provider.jwks)


def _secret(provider: JwtProvider, field: str, environ: Mapping[str, str]) -> bytes:
    name = str(provider.secret_env)
    value = environ.get(name)
    if value is None:
        raise ConfigError(f"{field}.secret_env: the environment variable {name} is not set")
    secret = value.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{field}.secret_env: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes "
            f"({name} holds {len(secret)})"
        )
    return secret


def _forwarded(provider: JwtProvider, field: str) -> tuple[str, ...]:
    headers: dict[str, str] = {}
    for index, path in enumerate(provider.forward_claims):
        header = forwarded_header(path)
        if not _METADATA_KEY.fullmatch(header):
            raise ConfigError(
                f"{field}.forward_claims[{index}]: {path!r} cannot be a metadata key ({header}); "
                "forward claims named with letters, digits, '_', '-' and '.'"
            )
        if header in headers:
            raise ConfigError(
                f"{field}.forward_claims[{index}]: {path!r} and {headers[header]!r} both travel as {header}"
            )
        headers[header] = path
    return provider.forward_claims


def _issuer(
    provider: JwtProvider, field: str, environ: Mapping[str, str], reusable: tuple[KeySet, ...]
) -> Issuer:
    algorithms = frozenset(provider.algorithms)
    keys = secret = None
    if provider.secret_env is not None:
        secret = _secret(provider, field, environ)
    else:
        timing = Timing(
            provider.jwks_refresh, provider.jwks_min_refetch, provider.jwks_timeout, provider.stale_after
        )
        keys = KeySet(provider.issuer, _source(provider), algorithms, timing, provider.jwks_cache)
        keys = next((old for old in reusable if old.same_source(keys)), keys)
    return Issuer(
        provider.issuer,
        provider.audiences,
        algorithms,
        provider.clock_skew,
        provider.token_from,
        provider.client_claim,
        _forwarded(provider, field),
        provider.forward_token,
        keys,
        secret,
    )


def load_tokens(
    config: GatewayConfig,
    routes: RouteTable,
    previous: TokenKeys | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[TokenAuth | None, TokenKeys]:
    """The token check of ``config``'s providers (None: it has none), and their key sets.

    Raises:
        ConfigError: naming the field: a secret that is not set or too short, a forwarded claim
            that cannot be metadata, an allow rule that names nothing routed.
    """
    providers = config.auth.jwt
    if not providers:
        return None, TokenKeys()
    # PyJWT, which verify.py and jwks.py import where they use it, is loaded here, with the config,
    # so that no call waits for its import, which loads cryptography's backends too
    # (``python -X importtime -c "import jwt"`` shows what it takes).
    importlib.import_module("jwt")
    environ = os.environ if environ is None else environ
    reusable = previous.sets if previous is not None else ()
    issuers = []
    rules: dict[str, dict[Issuer, tuple[ClaimTest, ...]]] = {}
    for index, provider in enumerate(providers):
        field = f"auth.jwt[{index}]"
        issuer = _issuer(provider, field, environ, reusable)
        issuers.append(issuer)
        for number, rule in enumerate(provider.allow):
            covered = (
                named_methods(rule.methods, f"{field}.allow[{number}].methods", routes)
                if rule.methods
                else set(routes.methods)
            )
            for path in covered:
                by_issuer = rules.setdefault(path, {})
                by_issuer[issuer] = (*by_issuer.get(issuer, ()), ClaimTest.of(rule))
    verifier = TokenVerifier(tuple(issuers))
    sets = tuple(issuer.keys for issuer in issuers if issuer.keys is not None)
    return TokenAuth(verifier, rules), TokenKeys(sets)
