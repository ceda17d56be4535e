"""[[auth.jwt]] in the config: errors name the field and the problem; an HS256 provider's chain in-process;
the verified-token cache stays bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from shop.users.v1 import users_pb2

from gateway.call.step import Call
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import load_plan
from gateway.policy.auth.jwt.cache import TokenCache
from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.jwt_support import bearer, claims, provider_toml
from tests.gateway.security_support import run_main

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

ROUTES = {USERS: "127.0.0.1:50051"}
ISSUER = "https://idp.example.com"
SECRET_ENV = "GATEWAY_TEST_JWT_SECRET"
SECRET = "a-shared-secret-of-at-least-32-bytes!"


def _provider(**fields: Any) -> str:
    return provider_toml(ISSUER, jwks="https://idp.example.com/jwks.json", **fields)


CASES = {
    "HS256 with a JWKS": (
        gateway_toml(ROUTES, rules="") + _provider(algorithms=["HS256"]),
        "auth.jwt[0]: HS256 needs a shared secret (secret_env), and then no other algorithm; "
        "a JWKS holds public keys",
    ),
    "secret not set": (
        gateway_toml(ROUTES, rules="") + provider_toml(ISSUER, secret_env="GATEWAY_TEST_UNSET_SECRET"),
        "auth.jwt[0].secret_env: the environment variable GATEWAY_TEST_UNSET_SECRET is not set",
    ),
    "not a JWKS source": (
        gateway_toml(ROUTES, rules="") + provider_toml(ISSUER, jwks="ftp://idp.example.com/keys"),
        "auth.jwt[0].jwks: 'ftp://idp.example.com/keys' is neither an http:// or https:// URL nor a file",
    ),
    "a claim that cannot be metadata": (
        gateway_toml(ROUTES, rules="") + _provider(forward_claims=["https://example.com/tenant"]),
        "auth.jwt[0].forward_claims[0]: 'https://example.com/tenant' cannot be a metadata key",
    ),
    "an allow rule without a test": (
        gateway_toml(ROUTES, rules="") + _provider(allow=[{"claim": "scope"}]),
        "auth.jwt[0].allow[0]: give exactly one of contains or equals",
    ),
    "an allow rule for nothing routed": (
        gateway_toml(ROUTES, rules="")
        + _provider(allow=[{"claim": "scope", "contains": "x", "methods": ["shop.Nope"]}]),
        "auth.jwt[0].allow[0].methods[0]: 'shop.Nope' is neither a routed service nor a method of one",
    ),
    "one issuer twice": (
        gateway_toml(ROUTES, rules="") + _provider() + _provider(),
        f"auth.jwt: issuer '{ISSUER}' has two providers; give each issuer one",
    ),
    "a route that wants tokens, and no provider": (
        gateway_toml(ROUTES, rules="").replace(
            f'service = "{USERS}"', f'service = "{USERS}"\nauth = ["jwt"]'
        ),
        "routes[0].auth: 'jwt' needs an [[auth.jwt]] provider, and the config has none",
    ),
    "no credentials at all": (
        f'[[routes]]\nservice = "{USERS}"\nupstream = "127.0.0.1:50051"\n',
        "api_keys: give at least one [[api_keys]] entry, or an [[auth.jwt]] provider",
    ),
    "an empty claim key": (
        gateway_toml(ROUTES, rules='[[rate_limit.rules]]\nrate = "1/second"\nkey = "claim:"\n') + _provider(),
        "rate_limit.rules[0].key: 'claim:' is not a rate-limit key; use 'client', 'peer', 'metadata:NAME', "
        "'field:NAME' or 'claim:NAME'",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_provider_is_a_config_error_naming_the_field(case: str, tmp_path: Path) -> None:
    text, message = CASES[case]
    code, stderr = run_main("--config", str(write_config(tmp_path, text)))
    assert code == 2, stderr
    assert message in stderr


def test_an_hs256_provider_takes_tokens_signed_with_its_secret_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    config = write_config(
        tmp_path, gateway_toml(ROUTES, rules="") + provider_toml(ISSUER, secret_env=SECRET_ENV)
    )
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    chain = load_plan(config, {}, lambda _: quiet).chain.of(f"/{USERS}/GetUser")

    def decided(token: str) -> tuple[grpc.StatusCode | None, str | None]:
        call = Call(
            "grpc", f"/{USERS}/GetUser", bearer(token), lambda: "ipv4:127.0.0.1:1", "r", chain.request_type
        )
        call.first = users_pb2.GetUserRequest(user_id=1).SerializeToString()
        verdict = chain.decide(call)
        return (None, call.client) if verdict is None else (verdict.code, verdict.message)

    assert decided(jwt.encode(claims(ISSUER), SECRET, algorithm="HS256")) == (None, "alice")
    forged = jwt.encode(claims(ISSUER), "another-secret-that-is-32-bytes-long", algorithm="HS256")
    assert decided(forged) == (
        grpc.StatusCode.UNAUTHENTICATED,
        f"token signature is not valid for issuer '{ISSUER}'",
    )
    monkeypatch.setenv(SECRET_ENV, "short")
    code, stderr = run_main("--config", str(config))
    assert code == 2
    assert f"auth.jwt[0].secret_env: an HS256 secret needs at least 32 bytes ({SECRET_ENV} holds 5)" in stderr


def test_the_token_cache_stays_bounded_and_forgets_expired_tokens() -> None:
    cache: TokenCache[int] = TokenCache(capacity=100)
    for number in range(1000):
        cache.put(number.to_bytes(4, "big"), number, expires=2000.0, now=1000.0)
        assert len(cache) <= 100
    assert cache.get((999).to_bytes(4, "big"), now=1000.0) == 999
    assert cache.get((0).to_bytes(4, "big"), now=1000.0) is None  # the oldest went first
    assert cache.get((999).to_bytes(4, "big"), now=2000.0) is None  # expired
    cache.put(b"new", 1, expires=3000.0, now=2500.0)  # a full cache of expired tokens: all go at once
    assert len(cache) == 1
