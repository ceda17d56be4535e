"""What a JWT costs the call chain, in-process: ``python -m bench.jwt_cost [--calls N]``.

Builds the plan of bench/gateway.toml with one ``[[auth.jwt]]`` provider (RS256, its JWKS in a
file, keys made here with cryptography) and runs a GetUser call's chain as a door does (a new
Call, the first request set, ``decide``): with the API key; with one token again and again (the
verified-token cache); and with a new token every call (each one verified by PyJWT: the first
call of a token). Prints CPU microseconds per call, medians of interleaved rounds. No servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from shop.users.v1 import users_pb2

from gateway.call.chain import MethodChain
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Metadata
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import Plan, load_plan

BENCH = Path(__file__).resolve().parent
METHOD = "/shop.users.v1.UserService/GetUser"
ISSUER = "https://idp.bench.example"
AUDIENCE = "shop-api"
COMMON = (("user-agent", "grpc-python/1.85"), ("content-type", "application/grpc"))
KEY_METADATA: Metadata = (("x-api-key", "secret-key"), *COMMON)


@dataclass(frozen=True)
class JwtCost:
    """CPU microseconds per call of the chain: with an API key, a cached token, a new token."""

    api_key: float
    cached_token: float
    first_token: float

    @property
    def cached_over_key(self) -> float:
        return self.cached_token - self.api_key

    def lines(self) -> list[str]:
        return [
            f"chain with an API key                 {self.api_key:7.2f} µs CPU per call",
            f"chain with a JWT, cached              {self.cached_token:7.2f} µs CPU per call "
            f"({self.cached_over_key:+.2f} µs over the API key)",
            f"chain with a JWT, first verification  {self.first_token:7.2f} µs CPU per call "
            "(RS256, 2048 bits)",
        ]


def _bench_plan(folder: Path, private: rsa.RSAPrivateKey) -> Plan:
    public = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(private.public_key()))
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "bench-1", "use": "sig"}]}))
    provider = f'\n[[auth.jwt]]\nissuer = "{ISSUER}"\naudiences = ["{AUDIENCE}"]\njwks = "jwks.json"\n'
    config = folder / "gateway.toml"
    config.write_text(
        (BENCH / "gateway.toml").read_text().replace("\n[[routes]]", provider + "\n[[routes]]", 1)
    )
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    return load_plan(config, {}, lambda _: quiet)


def _token(private: rsa.RSAPrivateKey, number: int) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{number % 100}", "iat": now, "exp": now + 3600}
    return jwt.encode({**claims, "jti": str(number)}, private, algorithm="RS256", headers={"kid": "bench-1"})


def _cpu_per_call(chain: MethodChain, metadata: Sequence[Metadata]) -> float:
    bodies = [
        users_pb2.GetUserRequest(user_id=1 + n % 1000).SerializeToString() for n in range(len(metadata))
    ]
    request_type = chain.request_type
    started = time.process_time()
    for each, body in zip(metadata, bodies, strict=True):
        call = Call("grpc", METHOD, each, lambda: "ipv4:127.0.0.1:5555", request_id_of(each), request_type)
        call.first = body
        verdict = chain.decide(call)
        if verdict is not None:
            raise RuntimeError(f"the bench's chain refused a call: {verdict}")
    return (time.process_time() - started) / len(metadata) * 1e6


def measure(calls: int = 100_000, first_calls: int = 2_000, rounds: int = 5) -> JwtCost:
    """Medians of ``rounds`` interleaved rounds; ``first_calls`` new tokens a round (signed beforehand)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory(prefix="jwt-cost-") as folder:
        plan = _bench_plan(Path(folder), private)
        plan.token_keys.start()
        try:
            missing = asyncio.run(plan.token_keys.ready(10))
            if missing:
                raise RuntimeError(f"no keys for {missing}")
            chain = plan.chain.of(METHOD)
            token = _token(private, 0)
            cached = [(("authorization", f"Bearer {token}"), *COMMON)] * calls
            by_key = [KEY_METADATA] * calls
            results: dict[str, list[float]] = {"key": [], "cached": [], "first": []}
            serial = 1
            for _ in range(rounds):
                fresh = []
                for _ in range(first_calls):
                    fresh.append((("authorization", f"Bearer {_token(private, serial)}"), *COMMON))
                    serial += 1
                results["key"].append(_cpu_per_call(chain, by_key))
                results["cached"].append(_cpu_per_call(chain, cached))
                results["first"].append(_cpu_per_call(chain, fresh))
        finally:
            plan.token_keys.stop()
    return JwtCost(_median(results["key"]), _median(results["cached"]), _median(results["first"]))


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jwt_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--first-calls", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cost = measure(args.calls, args.first_calls, args.rounds)
    for line in cost.lines():
        print(line)
    print(f"(medians of {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
