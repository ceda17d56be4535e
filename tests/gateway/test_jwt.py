"""JWT auth beside API keys, end to end: a gateway process, an upstream that records what reaches it,
and an identity provider's JWKS on a real loopback HTTP server, keys made here with cryptography."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path

import grpc
import httpx
import jwt
from cryptography.hazmat.primitives import serialization

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.jwt_support import (
    AUDIENCE,
    Provider,
    SigningKey,
    bearer,
    call_with,
    claims,
    jwt_gateway,
    provider_toml,
    serving,
)
from tests.gateway.ops_support import gateway_beside
from tests.gateway.security_support import get_user
from tests.gateway.upstream_double import ECHO, Recorder, start_upstream
from tests.support.processes import free_port

GET_USER = f"/{USERS}/GetUser"


async def test_a_good_token_is_forwarded_as_its_client_with_its_claims_and_without_itself(
    tmp_path: Path,
) -> None:
    provider = Provider(keys=[SigningKey.rsa("k1")])
    with serving(provider) as issuer:
        other = issuer + "/tenants"  # a second issuer, same keys, that forwards its tokens
        providers = provider_toml(issuer, forward_claims=["email", "realm_access.roles"]) + provider_toml(
            other, jwks=issuer + "/jwks.json", forward_token=True
        )
        async with jwt_gateway(tmp_path, providers) as (gateway, recorder):
            token = provider.keys[0].sign(
                claims(issuer, email="alice@example.com", realm_access={"roles": ["admin", "reader"]})
            )
            # A caller cannot pass claims of its own off as the gateway's.
            forged = (("x-jwt-tenant", "globex"), ("x-client-id", "mallory"))
            result = await get_user(gateway.address, None, ECHO, metadata=(*bearer(token), *forged))
            assert result.code == grpc.StatusCode.OK, result
            seen = recorder.metadata[-1]
            assert seen["x-client-id"] == "alice"
            assert seen["x-jwt-email"] == "alice@example.com"
            assert seen["x-jwt-realm_access.roles"] == "admin,reader"
            assert "x-jwt-tenant" not in seen
            assert "authorization" not in seen

            forwarded = provider.keys[0].sign(claims(other, subject="bob"))
            assert (await call_with(gateway, forwarded)).code == grpc.StatusCode.OK
            seen = recorder.metadata[-1]
            assert (seen["x-client-id"], seen["authorization"]) == ("bob", f"Bearer {forwarded}")

            # Keys work as before, beside tokens.
            by_key = await get_user(gateway.address, "secret-key", ECHO)
            assert by_key.code == grpc.StatusCode.OK
            assert recorder.metadata[-1]["x-client-id"] == "demo"
            logs = gateway.log()
    for secret in (token, forwarded, token.split(".")[2]):
        assert secret not in logs


def _hs256_with_public_key(key: SigningKey, body: dict[str, object]) -> str:
    """The algorithm-confusion attack: an HS256 token whose HMAC secret is the RSA public key's PEM."""
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = ".".join(
        part(json.dumps(data).encode()) for data in ({"alg": "HS256", "typ": "JWT", "kid": key.kid}, body)
    )
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_every_refusal_says_what_is_wrong_and_never_shows_the_token(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    with serving(provider) as issuer:
        allow = [{"claim": "scope", "contains": "users.read", "methods": [USERS]}]
        limits = "\n[limits]\nmax_metadata_bytes = 262144\n"  # a 100 KB token reaches the gateway's check
        async with jwt_gateway(tmp_path, provider_toml(issuer, allow=allow), limits) as (gateway, _):
            good = claims(issuer, scope="openid users.read")
            unauthenticated = grpc.StatusCode.UNAUTHENTICATED
            cases: list[tuple[str, grpc.StatusCode, str]] = [
                (key.sign({**good, "exp": good["iat"] - 72}), unauthenticated, r"token expired 7[23] s ago"),
                (
                    key.sign({**good, "aud": "x"}),
                    unauthenticated,
                    re.escape(f"token audience 'x' is not one of '{AUDIENCE}'"),
                ),
                (
                    SigningKey.rsa("k9").sign(good),
                    unauthenticated,
                    r"token signed with unknown key id 'k9' \(keys refreshed \d+ s ago\)",
                ),
                (
                    key.sign({**good, "iss": "https://idp.evil.example"}),
                    unauthenticated,
                    re.escape("token issuer 'https://idp.evil.example' is not configured"),
                ),
                (
                    key.sign(claims(issuer, scope="openid")),
                    grpc.StatusCode.PERMISSION_DENIED,
                    re.escape(f"client alice may not call {GET_USER}: the token's ")
                    + re.escape("claim scope must contain 'users.read'"),
                ),
                (
                    jwt.encode(good, "", algorithm="none"),
                    unauthenticated,
                    re.escape(
                        f"token algorithm 'none' is not accepted for issuer '{issuer}' (accepted: RS256)"
                    ),
                ),
                (
                    _hs256_with_public_key(key, good),
                    unauthenticated,
                    re.escape(
                        f"token algorithm 'HS256' is not accepted for issuer '{issuer}' (accepted: RS256)"
                    ),
                ),
                (
                    key.sign({**good, "nbf": good["iat"] + 300}),
                    unauthenticated,
                    r"token is not valid for another (29\d|300) s \(nbf\)",
                ),
                (
                    _tampered(key.sign(good)),
                    unauthenticated,
                    re.escape(f"token signature is not valid for issuer '{issuer}'"),
                ),
                (
                    "e" * 102_400,
                    unauthenticated,
                    re.escape("token is 102400 bytes; at most 16384 are accepted"),
                ),
                (
                    "garbage.not-a.token!",
                    unauthenticated,
                    re.escape("token is not a well-formed JWT (header.payload.signature, base64url JSON)"),
                ),
            ]
            for token, code, message in cases:
                result = await call_with(gateway, token)
                assert result.code == code, (message, result)
                assert re.fullmatch(message, result.details), result.details
                if code == unauthenticated:
                    assert result.trailing["www-authenticate"] == (
                        f'Bearer error="invalid_token", error_description="{result.details}"'
                    )
            assert (await call_with(gateway, key.sign(good))).code == grpc.StatusCode.OK

            missing = await get_user(gateway.address, None, ECHO)
            assert (missing.code, missing.details, missing.trailing["www-authenticate"]) == (
                unauthenticated,
                "missing credentials: send x-api-key metadata or 'authorization: Bearer <token>'",
                "Bearer",
            )
            basic = await get_user(gateway.address, None, ECHO, metadata=(("authorization", "Basic YTpi"),))
            assert basic.details == (
                "authorization metadata is not a Bearer token; send 'authorization: Bearer <token>'"
            )
            logs = gateway.log()
    for token, _, _ in cases:
        signature = token.rsplit(".", 1)[-1]
        assert len(signature) < 20 or signature not in logs


async def test_a_route_may_take_one_kind_of_credential(tmp_path: Path) -> None:
    key = SigningKey.ec("ec-1")
    provider = Provider(keys=[key])
    with serving(provider) as issuer:
        recorder = Recorder()
        upstream, port = await start_upstream(recorder)
        text = gateway_toml({USERS: f"127.0.0.1:{port}"}, rules="").replace(
            f'service = "{USERS}"', f'service = "{USERS}"\nauth = ["jwt"]'
        ) + provider_toml(issuer, algorithms=["ES256"])
        try:
            async with gateway_beside(write_config(tmp_path, text)) as gateway:
                by_key = await get_user(gateway.address, "secret-key", ECHO)
                assert (by_key.code, by_key.details) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{GET_USER} takes tokens, not API keys: send 'authorization: Bearer <token>'",
                )
                assert (await call_with(gateway, key.sign(claims(issuer)))).code == grpc.StatusCode.OK
        finally:
            await upstream.stop(0)


async def test_claim_keys_share_one_budget_per_subject_and_overrides_name_clients(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    rules = """
[[rate_limit.rules]]
name = "per-subject"
rate = "2/minute"
key = "claim:sub"
overrides = { carol = "4/minute" }
"""
    with serving(provider) as issuer:
        # No jwks: the keys are found through the issuer's OpenID Connect discovery document.
        async with jwt_gateway(tmp_path, provider_toml(issuer, discover=True), rules) as (gateway, _):
            first, second = (key.sign(claims(issuer, subject="alice")) for _ in range(2))
            assert first != second  # two tokens (their jti differs) of one subject
            assert [(await call_with(gateway, token)).code for token in (first, second)] == [
                grpc.StatusCode.OK
            ] * 2
            refused = await call_with(gateway, first)
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert re.fullmatch(
                r"rate limit exceeded for sub alice: 2 per minute, retry in \d+ s", refused.details
            ), refused.details
            bob = await call_with(gateway, key.sign(claims(issuer, subject="bob")))
            assert (bob.code, bob.initial["x-ratelimit-remaining"]) == (grpc.StatusCode.OK, "1")
            carol = key.sign(claims(issuer, subject="carol"))
            codes = [(await call_with(gateway, carol)).code for _ in range(5)]
            assert codes == [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert provider.discoveries >= 1


async def test_the_http_door_answers_401_with_a_bearer_challenge(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    http_port = free_port()
    with serving(provider) as issuer:
        options = ("--http-listen", f"127.0.0.1:{http_port}")
        async with (
            jwt_gateway(tmp_path, provider_toml(issuer), "", *options) as (_, recorder),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as web,
        ):
            expired = key.sign(claims(issuer, lifetime=-100))
            refused = await web.get(f"/v1/users/{ECHO}", headers={"authorization": f"Bearer {expired}"})
            assert refused.status_code == 401
            message = refused.json()["message"]
            assert re.fullmatch(r"token expired 1\d\d s ago", message), message
            assert refused.headers["www-authenticate"] == (
                f'Bearer error="invalid_token", error_description="{message}"'
            )
            missing = await web.get(f"/v1/users/{ECHO}")
            assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
            good = key.sign(claims(issuer, subject="dave"))
            answered = await web.get(f"/v1/users/{ECHO}", headers={"authorization": f"Bearer {good}"})
            assert answered.status_code == 200, answered.text
            assert answered.json()["name"] == "echo"
            assert recorder.metadata[-1]["x-client-id"] == "dave"
            assert "authorization" not in recorder.metadata[-1]
