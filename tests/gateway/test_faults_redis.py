"""A single Redis that fails: exact between replicas, quiet or busy; exact after a restart, on the
first burst of an idle gateway; a pause costs no decision more than the storage timeout; and the
local mode keeps limiting while Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.gateway.conftest import Services
from tests.gateway.faults_support import (
    EXACT_TIMEOUT,
    PASSED,
    UNAVAILABLE,
    assert_bounded_by_timeout,
    burst,
    exact_runs,
    replicas,
    tally,
    timed_calls,
)
from tests.gateway.ops_support import get_user, value, wait_for
from tests.support.redis import RedisServer, redis_server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_exact_across_two_replicas_quiet_and_busy(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    async with replicas(services, tmp_path, redis.url, timeout=EXACT_TIMEOUT) as (a, b):
        await exact_runs(a, b, list(range(200, 210)))


async def test_the_first_burst_after_a_restart_is_exact_and_never_refused_unavailable(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    async with replicas(services, tmp_path, redis.url, on_error="deny") as (a, b):
        assert tally(await burst(a, b, 300, calls=2)) == (2, 0, set())
        redis.kill()
        redis.start()
        await asyncio.sleep(0.5)  # idle: nothing has used the connections since Redis went away
        codes = await burst(a, b, 301)
        assert tally(codes) == (5, 95, set())


@pytest.mark.parametrize("mode", ["allow", "deny", "local"])
async def test_a_paused_redis_costs_a_decision_no_more_than_the_timeout(
    services: Services, redis: RedisServer, tmp_path: Path, mode: str
) -> None:
    timeout = 0.05
    expected = {UNAVAILABLE} if mode == "deny" else PASSED
    async with (
        replicas(services, tmp_path, redis.url, on_error=mode, timeout=timeout) as (a, _),
        grpc.aio.insecure_channel(a.address) as channel,
    ):
        assert (await get_user(channel, 400))[0] in PASSED
        healthy = await timed_calls(channel, list(range(390, 400)))
        redis.freeze()
        try:
            failing = await timed_calls(channel, list(range(401, 411)))
        finally:
            redis.thaw()
        assert {code for code, _ in healthy} <= PASSED
        assert {code for code, _ in failing} <= expected
        assert_bounded_by_timeout([s for _, s in healthy], [s for _, s in failing], timeout)
        samples = a.scrape()
        assert value(samples, "grpc_gateway_rate_limit_store_failures_total", kind="timeout") == 10
        mode_now = {"allow": "open", "deny": "closed", "local": "local"}[mode]
        assert value(samples, "grpc_gateway_rate_limit_store_mode", mode=mode_now) == 1
        # Answered again: shared, and the outage's end is logged with what it touched.
        assert (await get_user(channel, 400))[0] in PASSED
        await wait_for(lambda: "rate-limit store available again" in a.log(), what="the recovery line")
        assert value(a.scrape(), "grpc_gateway_rate_limit_store_mode", mode="shared") == 1
        assert '"calls": 10' in a.log()


async def test_local_mode_limits_to_the_rate_over_both_replicas_while_redis_is_down(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    async with replicas(
        services, tmp_path, redis.url, on_error="local", replicas=2, timeout=EXACT_TIMEOUT
    ) as (a, b):
        assert tally(await burst(a, b, 500, calls=2)) == (2, 0, set())
        redis.kill()
        codes = await burst(a, b, 501)
        # 5 // 2 = 2 each: at most the rate over both, never INTERNAL or UNAVAILABLE.
        assert tally(codes) == (4, 96, set())
        assert '"message": "rate-limit store unavailable"' in a.log()
        redis.start()
        deadline = time.monotonic() + 5
        while '"message": "rate-limit store available again"' not in a.log() + b.log() or (
            value(a.scrape(), "grpc_gateway_rate_limit_store_mode", mode="shared") != 1
        ):
            assert time.monotonic() < deadline, "the replicas did not go back to the shared budget"
            await burst(a, b, 502, calls=2)
            await asyncio.sleep(0.05)
        codes = await burst(a, b, 503)
        assert tally(codes) == (5, 95, set())
