"""What the fault tests share: two gateway replicas on one store, bursts, and busy CPUs."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import limits

from gateway.policy.ratelimit.script import budget_keys
from gateway.policy.ratelimit.topology import hash_slot
from tests.gateway.conftest import Services
from tests.gateway.ops_support import Gateway, gateway_beside, get_user
from tests.gateway.test_shared_limits import limits_toml, many_calls, two_gateways

OK, REFUSED, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE

RATE = "5/30 seconds"

# What a call that the limiter let through gets from the user service (which knows only a few ids).
PASSED = frozenset({OK, grpc.StatusCode.NOT_FOUND})


def tally(codes: list[grpc.StatusCode]) -> tuple[int, int, set[grpc.StatusCode]]:
    """How many calls passed the limiter, how many it refused, and any other status seen."""
    passed = sum(code in PASSED for code in codes)
    return passed, codes.count(REFUSED), set(codes) - PASSED - {REFUSED}


# Seconds the exactness runs give the store: they count, they do not time out (see README, Redis).
EXACT_TIMEOUT = 1.0


async def timed_calls(channel: grpc.aio.Channel, users: list[int]) -> list[tuple[grpc.StatusCode, float]]:
    """GetUser for each of ``users`` in turn: each call's status and its seconds."""
    timed = []
    for user in users:
        started = time.monotonic()
        code, _, _ = await get_user(channel, user)
        timed.append((code, time.monotonic() - started))
    return timed


def assert_bounded_by_timeout(healthy: list[float], failing: list[float], timeout: float) -> None:
    """Calls while the store fails cost what a healthy call costs, plus the storage timeout.

    Measured against healthy calls of the same run, not a fixed figure, so a slow machine moves
    both; the median shows the timeout is honoured, the maximum that no call waits for a second.
    """
    shown = [round(seconds, 3) for seconds in failing], [round(seconds, 3) for seconds in healthy]
    assert statistics.median(failing) < timeout + statistics.median(healthy) + 0.02, shown
    assert max(failing) < 2 * timeout + max(healthy), shown


@contextlib.asynccontextmanager
async def replicas(
    services: Services, folder: Path, storage: str, **options: str | float | int
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways sharing ``storage`` at RATE per user_id, with metrics."""
    first, second = two_gateways(services, folder, limits_toml(storage, RATE, **options))  # type: ignore[arg-type]
    async with (
        gateway_beside(first, metrics=True) as a,
        gateway_beside(second, metrics=True) as b,
    ):
        yield a, b


async def burst(a: Gateway, b: Gateway, user: int, calls: int = 100) -> list[grpc.StatusCode]:
    """``calls`` concurrent calls for ``user``, half through each replica."""
    halves = await asyncio.gather(
        many_calls(a.address, user, calls // 2), many_calls(b.address, user, calls // 2)
    )
    return halves[0] + halves[1]


@contextlib.contextmanager
def busy_cpus(seconds: float = 5.0, count: int = 2) -> Iterator[None]:
    """Every core kept busy by a loop that ends by itself after ``seconds`` (or with the block)."""
    loop = "\n".join(
        [
            "import time",
            f"end = time.monotonic() + {seconds}",
            "print(flush=True)",
            "while time.monotonic() < end: pass",
        ]
    )
    loops = [subprocess.Popen([sys.executable, "-c", loop], stdout=subprocess.PIPE) for _ in range(count)]
    try:
        for process in loops:
            assert process.stdout is not None
            process.stdout.readline()  # spinning from now on
        yield
    finally:
        for process in loops:
            process.kill()
            process.wait()


async def exact_runs(a: Gateway, b: Gateway, users: list[int]) -> None:
    """A burst of 100 for each of ``users``: exactly 5 pass every time; cores saturated every other run."""
    for run, user in enumerate(users):
        with busy_cpus() if run % 2 else contextlib.nullcontext():
            codes = await burst(a, b, user)
        counted = tally(codes)
        assert counted == (5, 95, set()), f"run {run}, user {user}: passed, refused, other = {counted}"


def slot_of_user(user: int) -> int:
    """The Cluster slot of ``user``'s budget under the test rule (``per-user``, key field:user_id)."""
    key, _ = budget_keys(limits.parse(RATE).key_for("per-user", f"user_id={user}"))
    return hash_slot(key)
