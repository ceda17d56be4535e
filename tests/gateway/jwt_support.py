"""What the JWT tests share: keys made here with cryptography, tokens signed with them, an identity
provider's JWKS served over real HTTP on loopback (http.server on a thread, on a free port), and a
gateway with providers in front of a recording upstream."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.ops_support import Gateway, gateway_beside
from tests.gateway.security_support import Result, get_user
from tests.gateway.upstream_double import ECHO, Recorder, start_upstream

AUDIENCE = "shop-api"


@dataclass
class SigningKey:
    """A private key of the provider's, its kid, and its public half as a JWK."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def rsa(cls, kid: str, algorithm: str = "RS256") -> SigningKey:
        return cls(kid, algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def ed25519(cls, kid: str) -> SigningKey:
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig"}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **(headers or {})}
        )


def claims(issuer: str, subject: str = "alice", lifetime: float = 300, **extra: Any) -> dict[str, Any]:
    """A token's claims for ``issuer``'s audience, valid for ``lifetime`` seconds from now."""
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": subject,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + int(lifetime),
        "jti": uuid.uuid4().hex,
        **extra,
    }


@dataclass
class Provider:
    """What the identity provider serves, and what it saw: mutable by the test while it serves."""

    keys: list[SigningKey] = field(default_factory=list)
    down: bool = False  # answer 503
    max_age: int | None = None  # Cache-Control: max-age
    fetches: list[float] = field(default_factory=list)  # monotonic times of JWKS fetches
    discoveries: int = 0
    issuer: str = ""  # set once the server has its port

    def document(self) -> bytes:
        return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()


class _Handler(BaseHTTPRequestHandler):
    provider: Provider

    def do_GET(self) -> None:
        provider = self.provider
        if self.path == "/.well-known/openid-configuration":
            provider.discoveries += 1
            body = json.dumps(
                {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks.json"}
            ).encode()
            self._reply(200, body)
        elif self.path == "/jwks.json":
            provider.fetches.append(time.monotonic())
            if provider.down:
                self._reply(503, b"down for maintenance")
            else:
                self._reply(200, provider.document())
        else:
            self._reply(404, b"")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.provider.max_age is not None:
            self.send_header("Cache-Control", f"public, max-age={self.provider.max_age}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@contextlib.contextmanager
def serving(provider: Provider) -> Iterator[str]:
    """Serve ``provider`` on 127.0.0.1 (a free port) until the block ends; yield its issuer URL, whose
    ``/jwks.json`` is the JWKS and ``/.well-known/openid-configuration`` the discovery document."""
    handler = type("Handler", (_Handler,), {"provider": provider})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    provider.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="jwks server", daemon=True)
    thread.start()
    try:
        yield provider.issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def provider_toml(issuer: str, jwks: str | None = None, discover: bool = False, **fields: Any) -> str:
    """One [[auth.jwt]] table for ``issuer`` (its JWKS at ``jwks``, by default the server's; none
    with ``discover``), short timings for tests, and any other ``fields`` (TOML values written by
    json.dumps, tables inline)."""
    values: dict[str, Any] = {
        "issuer": issuer,
        "audiences": [AUDIENCE],
        "jwks_min_refetch": 1.0,
        "jwks_timeout": 2.0,
        **fields,
    }
    if not discover and "secret_env" not in fields:
        values["jwks"] = jwks if jwks is not None else issuer + "/jwks.json"
    lines = ["[[auth.jwt]]"]
    for name, value in values.items():
        if value is None:
            continue
        lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(value)


@contextlib.asynccontextmanager
async def jwt_gateway(
    tmp_path: Path, providers: str, rules: str = "", *options: str, metrics: bool = False
) -> AsyncIterator[tuple[Gateway, Recorder]]:
    """A gateway with the demo key and ``providers`` in front of a recording UserService."""
    recorder = Recorder()
    upstream, port = await start_upstream(recorder)
    config = write_config(tmp_path, gateway_toml({USERS: f"127.0.0.1:{port}"}, rules=rules) + providers)
    try:
        async with gateway_beside(config, *options, metrics=metrics) as gateway:
            yield gateway, recorder
    finally:
        await upstream.stop(0)


async def call_with(gateway: Gateway, token: str, user_id: int = ECHO) -> Result:
    return await get_user(gateway.address, None, user_id, metadata=bearer(token))
