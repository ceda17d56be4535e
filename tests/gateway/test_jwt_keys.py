"""An issuer's keys over time: rotation, a flood of unknown key ids, an outage, start-up, disk, reloads.

The identity provider is a real HTTP server on loopback (tests/gateway/jwt_support.py) whose keys,
outages and fetch log the tests control.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.jwt_support import (
    Provider,
    SigningKey,
    bearer,
    call_with,
    claims,
    jwt_gateway,
    provider_toml,
    serving,
)
from tests.gateway.ops_support import gateway_beside, value, wait_for
from tests.gateway.security_support import get_user
from tests.gateway.upstream_double import ECHO, Recorder, start_upstream
from tests.support.processes import free_port, running, stderr_text


async def _past_throttle(provider: Provider, min_refetch: float) -> None:
    """Wait out the throttle that the last fetch started (fetches are at least this far apart)."""
    await asyncio.sleep(max(0.0, provider.fetches[-1] + min_refetch + 0.05 - time.monotonic()))


def _with_kid(token: str, kid: str) -> str:
    """``token`` with another key id in its header (its signature no longer fits: never looked at)."""
    header, rest = token.split(".", 1)
    data = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    encoded = base64.urlsafe_b64encode(json.dumps({**data, "kid": kid}).encode()).rstrip(b"=").decode()
    return f"{encoded}.{rest}"


async def test_a_token_signed_with_a_new_key_is_accepted_after_one_refetch(tmp_path: Path) -> None:
    old = SigningKey.rsa("2026-11")
    provider = Provider(keys=[old])
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_min_refetch=0.5, algorithms=["RS256", "EdDSA"])
        async with jwt_gateway(tmp_path, toml) as (gateway, _):
            assert (await call_with(gateway, old.sign(claims(issuer)))).code == grpc.StatusCode.OK
            await _past_throttle(provider, 0.5)
            fetched = len(provider.fetches)
            new = SigningKey.ed25519("2026-12")
            provider.keys.append(new)  # the provider rotates: it publishes a new key and signs with it
            first = await call_with(gateway, new.sign(claims(issuer)))
            assert first.code == grpc.StatusCode.OK, first
            assert len(provider.fetches) == fetched + 1
            # Both keys verify now, without another fetch.
            assert (await call_with(gateway, old.sign(claims(issuer)))).code == grpc.StatusCode.OK
            assert (await call_with(gateway, new.sign(claims(issuer)))).code == grpc.StatusCode.OK
            assert len(provider.fetches) == fetched + 1


async def test_a_flood_of_unknown_key_ids_fetches_at_most_once_per_min_refetch(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    min_refetch = 1.5
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_min_refetch=min_refetch)
        async with jwt_gateway(tmp_path, toml) as (gateway, _):
            await _past_throttle(provider, min_refetch)
            before = len(provider.fetches)
            signed = key.sign(claims(issuer))
            tokens = [_with_kid(signed, uuid.uuid4().hex) for _ in range(1000)]
            started = time.monotonic()
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = users_pb2_grpc.UserServiceStub(channel)

                async def one(token: str) -> tuple[grpc.StatusCode, str]:
                    try:
                        await stub.GetUser(
                            users_pb2.GetUserRequest(user_id=ECHO), metadata=bearer(token), timeout=10
                        )
                    except grpc.aio.AioRpcError as error:
                        return error.code(), error.details() or ""
                    return grpc.StatusCode.OK, ""

                results = []
                for batch in range(0, len(tokens), 100):
                    results += await asyncio.gather(*(one(token) for token in tokens[batch : batch + 100]))
            elapsed = time.monotonic() - started
            assert {code for code, _ in results} == {grpc.StatusCode.UNAUTHENTICATED}
            assert all(details.startswith("token signed with unknown key id '") for _, details in results)
            during = provider.fetches[before:]
            assert 1 <= len(during) <= 1 + elapsed / min_refetch, (len(during), elapsed)
            gaps = [
                later - earlier
                for earlier, later in zip(provider.fetches[before - 1 :], during, strict=False)
            ]
            assert min(gaps) >= min_refetch - 0.05, gaps
            # The gateway still knows the real key.
            assert (await call_with(gateway, key.sign(claims(issuer)))).code == grpc.StatusCode.OK


async def test_a_provider_outage_keeps_the_last_good_keys_and_shows_in_metrics(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_refresh=0.3, jwks_min_refetch=0.1)
        async with jwt_gateway(tmp_path, toml, metrics=True) as (gateway, _):
            cached = key.sign(claims(issuer))
            assert (await call_with(gateway, cached)).code == grpc.StatusCode.OK
            assert value(gateway.scrape(), "grpc_gateway_jwks_fetch_failing", issuer=issuer) == 0
            provider.down = True
            await wait_for(
                lambda: (
                    value(
                        gateway.scrape(), "grpc_gateway_jwks_fetches_total", issuer=issuer, outcome="failed"
                    )
                    >= 2
                ),
                what="failed JWKS fetches in the metrics",
            )
            samples = gateway.scrape()
            assert value(samples, "grpc_gateway_jwks_fetch_failing", issuer=issuer) == 1
            assert value(samples, "grpc_gateway_jwks_keys", issuer=issuer) == 1
            assert value(samples, "grpc_gateway_jwks_age_seconds", issuer=issuer) > 0
            # Tokens verify against the last good keys: one seen before, and one never seen.
            assert (await call_with(gateway, cached)).code == grpc.StatusCode.OK
            assert (
                await call_with(gateway, key.sign(claims(issuer, subject="bob")))
            ).code == grpc.StatusCode.OK
            assert "JWKS fetch failed; the last good keys stay in use" in gateway.log()
            provider.down = False
            await wait_for(
                lambda: value(gateway.scrape(), "grpc_gateway_jwks_fetch_failing", issuer=issuer) == 0,
                what="the JWKS fetched again",
            )


async def test_the_jwks_answer_s_max_age_sets_the_refresh(tmp_path: Path) -> None:
    provider = Provider(keys=[SigningKey.rsa("k1")], max_age=1)
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_refresh=300.0, jwks_min_refetch=0.1)
        async with jwt_gateway(tmp_path, toml) as _:
            await wait_for(lambda: len(provider.fetches) >= 3, within=5.0, what="refreshes every max-age")
        gaps = [
            later - earlier for earlier, later in zip(provider.fetches, provider.fetches[1:], strict=False)
        ]
        assert min(gaps[:2]) >= 0.95, gaps


async def test_keys_older_than_stale_after_refuse_tokens_unavailable(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_refresh=0.2, jwks_min_refetch=0.1, stale_after=1.0)
        async with jwt_gateway(tmp_path, toml) as (gateway, _):
            token = key.sign(claims(issuer))
            assert (await call_with(gateway, token)).code == grpc.StatusCode.OK
            provider.down = True
            refused = None
            deadline = time.monotonic() + 5
            while refused is None and time.monotonic() < deadline:
                result = await call_with(gateway, token)
                refused = result if result.code != grpc.StatusCode.OK else None
                await asyncio.sleep(0.1)
            assert refused is not None
            assert refused.code == grpc.StatusCode.UNAVAILABLE
            assert refused.details.startswith(f"the keys of issuer '{issuer}' are ")
            assert refused.details.endswith(" s old and cannot be refreshed now; try again later")


async def _health(address: str) -> int | None:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None  # not listening yet
        return int(reply.status)


async def test_not_serving_until_the_keys_are_in_then_they_are_kept_on_disk(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key], down=True)
    cache = tmp_path / "jwks-cache.json"
    upstream, upstream_port = await start_upstream(Recorder())
    try:
        with serving(provider) as issuer:
            toml = provider_toml(issuer, jwks_refresh=0.5, jwks_min_refetch=0.1, jwks_cache=str(cache))
            config = write_config(
                tmp_path, gateway_toml({USERS: f"127.0.0.1:{upstream_port}"}, rules="") + toml
            )
            port = free_port()
            address = f"127.0.0.1:{port}"
            args = ["-m", "gateway", "--config", str(config), "--listen", address]
            with contextlib.ExitStack() as stack:
                starting = asyncio.ensure_future(asyncio.to_thread(stack.enter_context, running(args, port)))
                statuses: set[int | None] = set()
                while len(provider.fetches) < 3:  # it keeps asking, and says it is not serving meanwhile
                    statuses.add(await _health(address))
                    await asyncio.sleep(0.05)
                assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
                assert health_pb2.HealthCheckResponse.SERVING not in statuses
                assert not starting.done()
                provider.down = False
                await asyncio.wait_for(starting, 15)
                token = key.sign(claims(issuer))
                assert (
                    await get_user(address, None, ECHO, metadata=bearer(token))
                ).code == grpc.StatusCode.OK
                assert json.loads(cache.read_text())["jwks"]["keys"][0]["kid"] == "k1"
                await asyncio.to_thread(stack.close)
            # The provider is down at the next start: the keys kept on disk let the gateway serve.
            provider.down = True
            async with gateway_beside(config) as gateway:
                result = await call_with(gateway, key.sign(claims(issuer, subject="carol")))
                assert result.code == grpc.StatusCode.OK, result
                assert "JWKS read from disk; the issuer cannot be reached" in gateway.log()
    finally:
        await upstream.stop(0)


async def test_a_reload_keeps_the_keys_of_an_unchanged_provider(tmp_path: Path) -> None:
    key = SigningKey.rsa("k1")
    provider = Provider(keys=[key])
    with serving(provider) as issuer:
        async with jwt_gateway(tmp_path, provider_toml(issuer)) as (gateway, _):
            fetched = len(provider.fetches)
            config = tmp_path / "gateway.toml"
            config.write_text(config.read_text() + '\n[[api_keys]]\nclient = "new"\nkey = "new-key-0001"\n')
            gateway.process.send_signal(signal.SIGHUP)
            await wait_for(lambda: '"config reloaded"' in stderr_text(gateway.process), what="the reload")
            assert (await get_user(gateway.address, "new-key-0001", ECHO)).code == grpc.StatusCode.OK
            assert (await call_with(gateway, key.sign(claims(issuer)))).code == grpc.StatusCode.OK
            assert len(provider.fetches) == fetched
