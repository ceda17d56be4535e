"""Budgets shared through Redis: across replicas and workers, exact under races, and what happens
when the store fails (fail open or closed, never waiting longer than the storage timeout)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services, start_gateway
from tests.support.processes import free_port, running, stderr_text
from tests.support.redis import RedisServer, redis_server

KEY = (("x-api-key", "secret-key"),)
OK, REFUSED = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED


# Counting tests give the store time to answer every call of a burst: they test exactness, not
# what happens when the store is late (a call let through, by on_storage_error = "allow").
COUNTING_TIMEOUT = 5.0


def limits_toml(
    storage: str, rate: str, on_error: str = "allow", timeout: float = COUNTING_TIMEOUT, replicas: int = 1
) -> str:
    return f"""
[rate_limit]
storage = "{storage}"
on_storage_error = "{on_error}"
storage_timeout = {timeout}
replicas = {replicas}

[[rate_limit.rules]]
name = "per-user"
rate = "{rate}"
key = "field:user_id"
"""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def get_user(address: str, user_id: int) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=user_id), metadata=KEY, timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return OK


async def many_calls(address: str, user_id: int, count: int) -> list[grpc.StatusCode]:
    """``count`` concurrent GetUser calls over one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                await stub.GetUser(users_pb2.GetUserRequest(user_id=user_id), metadata=KEY, timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return OK

        return list(await asyncio.gather(*(one() for _ in range(count))))


def two_gateways(services: Services, folder: Path, limits: str) -> tuple[Path, Path]:
    text = gateway_toml(services.routes, rules=limits)
    return write_config(folder, text, "a.toml"), write_config(folder, text, "b.toml")


async def test_two_replicas_share_one_budget(services: Services, redis: RedisServer, tmp_path: Path) -> None:
    first, second = two_gateways(services, tmp_path, limits_toml(redis.url, "5/30 seconds"))
    with start_gateway(first) as a, start_gateway(second) as b:
        codes = [await get_user(address, 103) for address in [a, b] * 5]
    assert codes == [OK] * 5 + [REFUSED] * 5


async def test_exact_under_concurrency_across_replicas(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    first, second = two_gateways(services, tmp_path, limits_toml(redis.url, "50/30 seconds"))
    with start_gateway(first) as a, start_gateway(second) as b:
        results = await asyncio.gather(many_calls(a, 103, 100), many_calls(b, 103, 100))
    codes = results[0] + results[1]
    assert (codes.count(OK), codes.count(REFUSED)) == (50, 150)


async def test_users_never_share_a_budget(services: Services, redis: RedisServer, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, gateway_toml(services.routes, rules=limits_toml(redis.url, "3/30 seconds"))
    )
    with start_gateway(config) as address:
        flood, other = await asyncio.gather(many_calls(address, 101, 60), many_calls(address, 102, 3))
    assert flood.count(OK) == 3
    assert other == [OK, OK, OK]


@pytest.mark.parametrize(("mode", "expected"), [("allow", OK), ("deny", grpc.StatusCode.UNAVAILABLE)])
async def test_dead_store(
    services: Services, redis: RedisServer, tmp_path: Path, mode: str, expected: grpc.StatusCode
) -> None:
    config = write_config(
        tmp_path,
        gateway_toml(
            services.routes, rules=limits_toml(redis.url, "2/30 seconds", on_error=mode, timeout=0.05)
        ),
    )
    port = free_port()
    with running(
        ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"], port
    ) as gateway:
        address = f"127.0.0.1:{port}"
        assert await get_user(address, 101) == OK
        redis.kill()
        codes = [await get_user(address, 101) for _ in range(5)]
        assert codes == [expected] * 5
        if mode == "deny":
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await users_pb2_grpc.UserServiceStub(channel).GetUser(
                        users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5
                    )
            assert caught.value.details() == "rate-limit store unavailable"
        # Logged once for the whole burst, not once per call; never with a key in it.
        log = stderr_text(gateway)
        assert log.count('"message": "rate-limit store unavailable"') == 1
        assert "secret-key" not in log

        # Redis back on the same port: counting resumes without a restart (the store is empty).
        redis.start()
        deadline = time.monotonic() + 10
        while await get_user(address, 104) != OK or await get_user(address, 104) != OK:
            assert time.monotonic() < deadline, "the gateway did not use Redis again"
            await asyncio.sleep(0.1)
        assert await get_user(address, 104) == REFUSED


async def test_frozen_store_costs_no_more_than_the_timeout(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, gateway_toml(services.routes, rules=limits_toml(redis.url, "100/30 seconds", timeout=0.05))
    )
    with start_gateway(config) as address:
        assert await get_user(address, 101) == OK
        redis.freeze()
        try:
            durations = []
            for _ in range(5):
                started = time.monotonic()
                assert await get_user(address, 101) == OK  # fail open
                durations.append(time.monotonic() - started)
        finally:
            redis.thaw()
        # 50 ms of storage timeout plus a loopback call and a new channel; never seconds.
        assert max(durations) < 0.5, durations
        assert await get_user(address, 101) == OK


def test_workers_with_memory_storage_are_refused(services: Services, tmp_path: Path) -> None:
    config = write_config(tmp_path, gateway_toml(services.routes))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(config),
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:50999",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "--workers 2 with storage = 'memory://' would give every worker a budget of its own" in result.stderr
    )
    assert "use a shared storage such as 'redis://127.0.0.1:6379'" in result.stderr


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's child processes that run a gateway worker (multiprocessing spawn)."""
    children = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


async def test_workers_share_one_port_and_one_budget(
    services: Services, redis: RedisServer, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, gateway_toml(services.routes, rules=limits_toml(redis.url, "5/30 seconds"))
    )
    port = free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--workers", "2"]
    with running(args, port) as supervisor:
        address = f"127.0.0.1:{port}"
        workers = _worker_pids(supervisor.pid)
        deadline = time.monotonic() + 15
        while stderr_text(supervisor).count('"message": "listening"') < 2:
            assert time.monotonic() < deadline, "both workers should be listening"
            await asyncio.sleep(0.05)
        # Each call on a new connection: the kernel spreads them over the workers.
        codes = [await get_user(address, 103) for _ in range(8)]
        assert codes == [OK] * 5 + [REFUSED] * 3
        assert len(workers) == 2
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=15) == 0, stderr_text(supervisor)
        assert not any(_running(pid) for pid in workers)
