"""Redis behind Sentinel: exact across replicas; the master killed: exact again within 5 s of
the replica's promotion, without restarting the gateways."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import Services
from tests.gateway.faults_support import EXACT_TIMEOUT, burst, exact_runs, replicas, tally
from tests.support.redis import RedisSentinel, redis_sentinel, wait_until


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    folder = tmp_path / "sentinel"
    folder.mkdir()
    with redis_sentinel(folder) as started:
        yield started


async def test_exact_and_through_a_failover(
    services: Services, sentinel: RedisSentinel, tmp_path: Path
) -> None:
    async with replicas(services, tmp_path, sentinel.url, timeout=EXACT_TIMEOUT) as (a, b):
        await exact_runs(a, b, list(range(3000, 3010)))
        sentinel.master.kill()
        # The sentinel's own pace, not the gateway's: on a loaded machine its first attempt may fail
        # and the next waits out the failover timeout.
        await asyncio.to_thread(
            wait_until, lambda: sentinel.named_master() == sentinel.replica.port, 30, "the promotion"
        )
        promoted = time.monotonic()
        user = 3100
        while tally(await burst(a, b, user, calls=2))[0] == 0:
            assert time.monotonic() - promoted < 5, "not counting on the promoted master within 5 s"
            user += 1
            await asyncio.sleep(0.05)
        assert tally(await burst(a, b, user + 1)) == (5, 95, set())
