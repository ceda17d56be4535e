"""A Redis Cluster of three masters: exact across replicas on every master; one master killed:
calls on its slots meet on_storage_error at once, calls on the others stay exact, and its slots
are exact again within 5 s of its return."""

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
    slot_of_user,
    tally,
    timed_calls,
)
from tests.gateway.ops_support import get_user
from tests.support.redis import RedisCluster, redis_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    folder = tmp_path / "cluster"
    folder.mkdir()
    with redis_cluster(folder) as started:
        yield started


def users_by_master(cluster: RedisCluster, first: int, count: int) -> dict[int, list[int]]:
    """``count`` users from ``first`` on for each master (by port), whose budgets live on it."""
    ranges = {master.port: cluster.slots_of(master) for master in cluster.masters}
    found: dict[int, list[int]] = {port: [] for port in ranges}
    user = first
    while any(len(users) < count for users in found.values()):
        slot = slot_of_user(user)
        port = next(port for port, spans in ranges.items() if any(a <= slot <= b for a, b in spans))
        if len(found[port]) < count:
            found[port].append(user)
        user += 1
    return found


async def test_exact_on_every_master(services: Services, cluster: RedisCluster, tmp_path: Path) -> None:
    by_master = users_by_master(cluster, 1000, 4)
    users = [user for pair in zip(*by_master.values(), strict=True) for user in pair][:10]
    async with replicas(services, tmp_path, cluster.url, timeout=EXACT_TIMEOUT) as (a, b):
        await exact_runs(a, b, users)


async def test_a_master_killed_and_back(services: Services, cluster: RedisCluster, tmp_path: Path) -> None:
    timeout = 0.05
    by_master = users_by_master(cluster, 2000, 11)
    dead_port, live_port = list(by_master)[:2]
    dead = next(master for master in cluster.masters if master.port == dead_port)
    on_dead, on_live = by_master[dead_port], by_master[live_port]
    async with replicas(services, tmp_path, cluster.url, on_error="deny", timeout=timeout) as (a, b):
        assert tally(await burst(a, b, on_dead[0], calls=2)) == (2, 0, set())
        async with grpc.aio.insecure_channel(a.address) as channel:
            healthy = await timed_calls(channel, on_live[1:11])
            dead.kill()
            failing = await timed_calls(channel, [on_dead[1]] * 10)
            assert {code for code, _ in healthy} <= PASSED
            assert {code for code, _ in failing} == {UNAVAILABLE}  # deny: never INTERNAL, never let through
            assert_bounded_by_timeout([s for _, s in healthy], [s for _, s in failing], timeout)
            # The live masters' budgets stay exact through the outage.
            assert tally(await burst(a, b, on_live[0])) == (5, 95, set())
            dead.start()
            back = time.monotonic()
            while (await get_user(channel, on_dead[2]))[0] not in PASSED:
                assert time.monotonic() - back < 5, "the master's slots were not used again within 5 s"
                await asyncio.sleep(0.05)
        assert tally(await burst(a, b, on_dead[3])) == (5, 95, set())
        assert "INTERNAL" not in a.log() + b.log()
