"""Upstreams: round-robin over several addresses, retries of idempotent methods by grpc core,
a default deadline per route, keepalive pings that find a dead upstream, and --workers metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from gateway.config.schema import ConfigError, GatewayConfig, UpstreamKeepalive, parse_config
from gateway.routing.channels import keepalive_options, service_config, target
from gateway.routing.table import build_routes, load_catalog
from tests.gateway.ops_support import (
    FLAKY,
    KEY,
    RECOMMENDATIONS,
    SLOW_BASE,
    USERS,
    Gateway,
    Seen,
    gateway,
    gateway_beside,
    get_user,
    route,
    toml,
    upstream,
    write,
)
from tests.support.processes import free_port, running

BALANCED = """
default_timeout = 0.5

[routes.retry]
methods = ["GetUser"]
max_attempts = 3
initial_backoff = 0.01
"""


async def _served_by(channel: grpc.aio.Channel, calls: int) -> Counter[str]:
    """Which upstream answered each of ``calls`` GetUser calls (every one must succeed)."""
    names: Counter[str] = Counter()
    for _ in range(calls):
        code, name, _ = await get_user(channel, 1)
        assert code == grpc.StatusCode.OK, name
        names[name] += 1
    return names


async def _until_both_answer(channel: grpc.aio.Channel, within: float) -> None:
    deadline = time.monotonic() + within
    while set(await _served_by(channel, 4)) != {"a", "b"}:
        assert time.monotonic() < deadline, f"a and b did not both answer within {within} s"
        await asyncio.sleep(0.05)


async def test_round_robin_skips_a_down_address_and_takes_it_back(tmp_path: Path) -> None:
    seen = Seen()
    async with upstream("b", seen=seen) as (port_b, _), contextlib.AsyncExitStack() as a_running:
        port_a, _ = await a_running.enter_async_context(upstream("a", seen=seen))
        config = toml(route(USERS, f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}", extra=BALANCED))
        async with (
            gateway_beside(write(tmp_path, config)) as started,
            grpc.aio.insecure_channel(started.address) as channel,
        ):
            # grpc connects to both in the background; once both are up it takes them in turn.
            await _until_both_answer(channel, within=5)
            # In turn: an even split, give or take a pick made while one connection was being refreshed
            # (seen 11/9 on a loaded machine).
            served = await _served_by(channel, 20)
            assert set(served) == {"a", "b"}
            assert min(served.values()) >= 8, served

            await a_running.aclose()
            # "a" is down: every call goes to "b", and none fails.
            assert await _served_by(channel, 20) == {"b": 20}

            # "a" is back on its address: grpc reconnects to it by itself (with backoff, about 1 s).
            async with upstream("a", port=port_a, seen=seen):
                await _until_both_answer(channel, within=10)


@pytest.fixture
async def balanced(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Seen]]:
    """A gateway balancing UserService over upstreams "a" and "b", which count attempts together."""
    seen = Seen()
    async with upstream("a", seen=seen) as (port_a, _), upstream("b", seen=seen) as (port_b, _):
        config = toml(route(USERS, f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}", extra=BALANCED))
        async with gateway_beside(write(tmp_path, config)) as started:
            yield started, seen


async def test_grpc_retries_idempotent_methods_only(balanced: tuple[Gateway, Seen]) -> None:
    started, seen = balanced
    async with grpc.aio.insecure_channel(started.address) as channel:
        # GetUser is listed as idempotent: its first attempt fails UNAVAILABLE, grpc core sends a second.
        request_id = (("x-request-id", "retried-1"),)
        code, _, _ = await get_user(channel, FLAKY, metadata=(*KEY, *request_id))
        assert code == grpc.StatusCode.OK
        assert seen.attempts["retried-1"] == 2
        assert seen.metadata[-1]["grpc-previous-rpc-attempts"] == "1"

        # ListUsers is not: its UNAVAILABLE reaches the caller as it came, after one attempt.
        users = users_pb2_grpc.UserServiceStub(channel)
        call = users.ListUsers(
            users_pb2.ListUsersRequest(segment="flaky"),
            metadata=(*KEY, ("x-request-id", "not-retried-1")),
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "try again")
        assert seen.attempts["not-retried-1"] == 1


async def test_route_default_timeout_applies_only_without_a_caller_deadline(
    balanced: tuple[Gateway, Seen],
) -> None:
    started, _ = balanced
    async with grpc.aio.insecure_channel(started.address) as channel:
        began = time.monotonic()
        code, _, _ = await get_user(channel, SLOW_BASE + 3000, deadline=None)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.4 <= time.monotonic() - began < 1.5  # the route's 0.5 s, not the upstream's 3 s

        # The caller's own deadline wins, even when longer than the route's default.
        began = time.monotonic()
        code, _, _ = await get_user(channel, SLOW_BASE + 800, deadline=3)
        assert code == grpc.StatusCode.OK
        assert time.monotonic() - began >= 0.8


async def test_keepalive_finds_a_frozen_upstream(tmp_path: Path) -> None:
    """A stream to an upstream that stops answering (SIGSTOP: the connection stays open) fails
    UNAVAILABLE after the keepalive timeout instead of hanging until its deadline.

    The route names its upstream "localhost:PORT": a host name, resolved by grpc, is fine too.
    """
    port = free_port()
    with running(["-m", "services.recommendations", "--listen", f"127.0.0.1:{port}"], port) as service:
        tail = "[upstream_keepalive]\ntime = 0.5\ntimeout = 0.5\n"
        config = write(tmp_path, toml(route(RECOMMENDATIONS, f"localhost:{port}"), tail=tail))
        with gateway(config) as started:
            async with grpc.aio.insecure_channel(started.address) as channel:
                stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
                stream = stub.StreamRecommendations(metadata=KEY, timeout=20)
                ask = recommendations_pb2.GetRecommendationsRequest
                await stream.write(ask(user_id=101))
                assert (await stream.read()).user_id == 101
                service.send_signal(signal.SIGSTOP)
                try:
                    frozen = time.monotonic()
                    await stream.write(ask(user_id=102))
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stream.read()
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() - frozen < 5
                finally:
                    service.send_signal(signal.SIGCONT)


def _two_free_ports() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text: str = reply.read().decode()
        return text


async def test_each_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    metrics = _two_free_ports()
    port = free_port()
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1")))
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    with running([*args, "--metrics-listen", str(metrics)], port):
        for worker_port in (metrics, metrics + 1):
            deadline = time.monotonic() + 15
            while True:
                try:
                    text = _metrics_text(worker_port)
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline, f"no metrics on port {worker_port}"
                    await asyncio.sleep(0.1)
            # Its own gauge (the readiness check's call may still be ending: 0 or 1).
            assert re.search(r"^grpc_gateway_calls_in_flight [01]\.0$", text, re.MULTILINE), text


def test_balanced_channel_settings() -> None:
    assert target(["127.0.0.1:1"]) == "127.0.0.1:1"
    assert target(["10.0.0.1:1", "10.0.0.2:1"]) == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    config = _config(route(USERS, "10.0.0.1:1", "10.0.0.2:1", extra=BALANCED))
    service = service_config(config.routes)
    assert service["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = service["methodConfig"]
    assert method["name"] == [{"service": USERS, "method": "GetUser"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.01s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert service["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    keepalive = dict(keepalive_options(UpstreamKeepalive(time=30, timeout=5)))
    assert keepalive == {
        "grpc.keepalive_time_ms": 30000,
        "grpc.keepalive_timeout_ms": 5000,
        "grpc.http2.ping_timeout_ms": 5000,
        "grpc.keepalive_permit_without_calls": 0,
    }
    assert keepalive_options(UpstreamKeepalive(time=0)) == []


def _config(routes: str) -> GatewayConfig:
    return parse_config(tomllib.loads(toml(routes)), "gateway.toml")


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            route(USERS, "127.0.0.1:1", "localhost:2"),
            "routes[0].upstreams: list IP addresses (e.g. '10.0.0.5:50051') to balance between; a host "
            "name goes alone",
        ),
        (
            route(USERS, "127.0.0.1:1", "[::1]:2"),
            "routes[0].upstreams: list IPv4 or IPv6 addresses, not both",
        ),
        (route(USERS, "127.0.0.1:1", "127.0.0.1:1"), "routes[0].upstreams: an address is listed twice"),
        (
            f'[[routes]]\nservice = "{USERS}"\nupstream = "127.0.0.1:1"\nupstreams = ["127.0.0.1:2"]\n',
            "routes[0]: give upstream or upstreams, not both",
        ),
        (
            f'[[routes]]\nservice = "{USERS}"\n',
            "routes[0]: no upstream: write upstream = 'HOST:PORT', or upstreams = ['HOST:PORT', ...]",
        ),
        (
            route(USERS, "127.0.0.1:1", extra="default_timeout = 0"),
            "routes[0].default_timeout: Input should be",
        ),
        (
            route(USERS, "127.0.0.1:1", extra="[routes.retry]\nmethods = []"),
            "routes[0].retry.methods: Tuple should have at least 1 item",
        ),
        (
            route(USERS, "127.0.0.1:1", extra='[routes.retry]\nmethods = ["GetUser"]\nmax_attempts = 6'),
            "routes[0].retry.max_attempts: Input should be less than or equal to 5",
        ),
    ],
)
def test_route_errors_name_the_field(routes: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(routes)
    assert str(caught.value).startswith(message), str(caught.value)


def test_retried_method_must_exist() -> None:
    config = _config(route(USERS, "127.0.0.1:1", extra='[routes.retry]\nmethods = ["GetUsers"]'))
    with pytest.raises(ConfigError) as caught:
        build_routes(config, load_catalog(config))
    assert str(caught.value) == (
        "routes[0].retry.methods[0]: shop.users.v1.UserService has no method 'GetUsers' "
        "(it has: GetUser, ListUsers)"
    )
