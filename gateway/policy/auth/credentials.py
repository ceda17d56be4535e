"""The chain's ``auth`` step: an API key or a JWT, as each method's route accepts.

With no ``[[auth.jwt]]`` provider this is the API-key check alone, as it always was. With
providers, a route takes both kinds unless its ``auth`` names one: a call that sends an API key
is judged by its key, any other by its token. Which check a method gets is decided once per
configuration, so a call pays for the kinds its method takes only.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.call.metadata import API_KEY_HEADER
from gateway.call.step import Call, Refusal, Wait
from gateway.config.schema import ConfigError, GatewayConfig
from gateway.policy.auth.authenticator import ApiKeyAuth
from gateway.policy.auth.jwt.step import MethodTokens, TokenAuth

API_KEY, JWT = "api_key", "jwt"
# The auth failures of a call that sent no credential at all.
_NOTHING_SENT = frozenset({"missing_key", "missing_token", "missing_credentials"})


def credential_kinds(config: GatewayConfig) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """The kinds of credential each route with an ``auth`` of its own takes, and every kind the
    config has.

    Raises:
        ConfigError: the config has no credentials at all, or a route asks for a kind it lacks.
    """
    every = frozenset(
        kind for kind, present in ((API_KEY, config.api_keys), (JWT, config.auth.jwt)) if present
    )
    if not every:
        raise ConfigError("api_keys: give at least one [[api_keys]] entry, or an [[auth.jwt]] provider")
    kinds: dict[str, frozenset[str]] = {}
    for index, route in enumerate(config.routes):
        if route.auth is None:
            continue
        for kind in route.auth:
            if kind not in every:
                needed = "an [[api_keys]] entry" if kind == API_KEY else "an [[auth.jwt]] provider"
                raise ConfigError(f"routes[{index}].auth: {kind!r} needs {needed}, and the config has none")
        kinds[route.service] = frozenset(route.auth)
    return kinds, every


class KeyOrToken:
    """A method that takes both: the key when the call sends one, else the token."""

    name = "auth"

    def __init__(self, keys: ApiKeyAuth, tokens: MethodTokens) -> None:
        self._keys = keys
        self._tokens = tokens

    def check(self, call: Call) -> Refusal | Wait | None:
        for name, _ in call.metadata:
            if name == API_KEY_HEADER:
                return self._keys.check(call)
        return self._tokens.check(call)


class NoCredentialNeeded:
    """A method a caller may call with no credential at all (reflection, which then describes only
    the services that need none); a credential that is sent is checked as anywhere else."""

    name = "auth"

    def __init__(self, check: ApiKeyAuth | MethodTokens | KeyOrToken) -> None:
        self._check = check

    def check(self, call: Call) -> Refusal | Wait | None:
        verdict = self._check.check(call)
        if isinstance(verdict, Refusal) and call.auth_failure in _NOTHING_SENT:
            call.auth_failure = None
            return None
        return verdict


class Credentials:
    """For each method, the check of the credentials it takes (None for public services)."""

    name = "auth"

    def __init__(
        self,
        keys: ApiKeyAuth,
        tokens: TokenAuth | None,
        kinds: Mapping[str, frozenset[str]],
        every_kind: frozenset[str],
        keyless: frozenset[str] = frozenset(),
    ) -> None:
        """``kinds``: by routed service, the kinds of credential its route takes; other paths (the
        gateway's own services, unrouted ones) take ``every_kind`` the config has. ``keyless``: the
        paths a call with no credential may call too."""
        self._keyless = keyless
        self._keys = keys
        self._tokens = tokens
        self._kinds = kinds
        self._every_kind = every_kind

    def for_method(
        self, path: str | None
    ) -> ApiKeyAuth | MethodTokens | KeyOrToken | NoCredentialNeeded | None:
        check = self._for_method(path)
        if check is not None and path in self._keyless:
            return NoCredentialNeeded(check)
        return check

    def _for_method(self, path: str | None) -> ApiKeyAuth | MethodTokens | KeyOrToken | None:
        keys = self._keys.for_method(path)
        if keys is None or self._tokens is None:
            return keys  # a public service; or no tokens configured: keys alone
        service = path.split("/")[1] if path is not None and path.count("/") == 2 else None
        kinds = self._kinds.get(service, self._every_kind) if service is not None else self._every_kind
        if JWT not in kinds:
            return keys
        tokens = self._tokens.for_method(path, keys_accepted=API_KEY in kinds)
        return KeyOrToken(keys, tokens) if API_KEY in kinds else tokens
