"""Memory under a flood of distinct users: ``python -m bench.flood``.

Not part of ``make test`` (it takes minutes). Two measurements:

- ``--storage-only``: a million distinct keys straight into each in-process storage (``limits``'
  own memory storage and the gateway's bounded one), then how long each takes to reclaim them
  once their windows have passed, and how much of the process's memory comes back.
- default: the same number of calls, each for another ``user_id``, through a real gateway
  process (memory storage, moving window); its RSS at the start, at the peak, and once the
  windows have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from shop.users.v1 import users_pb2

from gateway.engines.base import TICK_SECONDS
from gateway.policy.ratelimit.rules import SWEEP_PER_TICK

PAGE = os.sysconf("SC_PAGE_SIZE")
CONFIG = """
listen = "127.0.0.1:{port}"
[[api_keys]]
client = "bench"
key = "secret-key"
[[routes]]
service = "shop.users.v1.UserService"
upstream = "127.0.0.1:{upstream}"
[[rate_limit.rules]]
rate = "5/{window} seconds"
key = "field:user_id"
"""


def rss_mib(pid: int) -> float:
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE / 2**20


async def _storage_run(name: str, storage: object, keys: int, window: int) -> dict[str, float]:
    import limits
    from limits.aio.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(storage)  # type: ignore[arg-type]
    item = limits.parse(f"5/{window} seconds")
    gc.collect()
    baseline = rss_mib(os.getpid())
    started = time.perf_counter()
    for number in range(keys):
        await limiter.hit(item, "flood", str(number))
    filled = time.perf_counter() - started
    peak = rss_mib(os.getpid())
    print(f"{name}: {keys} keys in {filled:.1f} s, RSS {baseline:.0f} -> {peak:.0f} MiB", flush=True)
    await asyncio.sleep(window)
    expired_at = time.perf_counter()
    # Keep the loop busy as a gateway would: one hit on a live key every millisecond, and the
    # engine's tick every 0.25 s (it sweeps the bounded storage; limits' sweeps itself).
    sweep = getattr(storage, "sweep", None)
    next_tick = time.perf_counter()
    while _held(storage) > 1 and time.perf_counter() - expired_at < 600:
        await limiter.hit(item, "flood", "live")
        await asyncio.sleep(0.001)
        if sweep is not None and time.perf_counter() >= next_tick:
            sweep(SWEEP_PER_TICK)
            next_tick += TICK_SECONDS
    reclaim = time.perf_counter() - expired_at
    gc.collect()
    settled = rss_mib(os.getpid())
    print(
        f"{name}: reclaimed in {reclaim:.1f} s after the window; RSS settled at {settled:.0f} MiB", flush=True
    )
    return {
        "fill_s": filled,
        "baseline_mib": baseline,
        "peak_mib": peak,
        "reclaim_s": reclaim,
        "settled_mib": settled,
    }


def _held(storage: object) -> int:
    events = getattr(storage, "windows", None)
    if events is None:
        events = getattr(storage, "events", {})
    return len(events)


def storage_only(keys: int, window: int) -> dict[str, dict[str, float]]:
    from limits.aio.storage import MemoryStorage

    from gateway.policy.ratelimit.memory import BoundedMemoryStorage

    results = {}
    for name, factory in (("bounded", BoundedMemoryStorage), ("limits", MemoryStorage)):
        results[name] = asyncio.run(_storage_run(name, factory(), keys, window))
    return results


async def _drive(port: int, users: int, concurrency: int, gateway_pid: int) -> float:
    peak = 0.0
    key = (("x-api-key", "secret-key"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/shop.users.v1.UserService/GetUser")
        bodies = (users_pb2.GetUserRequest(user_id=n).SerializeToString() for n in range(1, users + 1))
        started = time.perf_counter()
        sent = 0

        async def worker() -> None:
            nonlocal sent
            for body in bodies:
                try:
                    await call(body, metadata=key, timeout=10)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                sent += 1

        async def report() -> None:
            nonlocal peak
            while True:
                await asyncio.sleep(5)
                peak = max(peak, rss_mib(gateway_pid))
                rate = sent / (time.perf_counter() - started)
                print(f"  {sent} calls, {rate:.0f}/s, gateway RSS {rss_mib(gateway_pid):.0f} MiB", flush=True)

        reporter = asyncio.create_task(report())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        reporter.cancel()
    return max(peak, rss_mib(gateway_pid))


def through_gateway(users: int, window: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        upstream, port = 50181, 50180
        config = Path(folder) / "flood.toml"
        config.write_text(CONFIG.format(port=port, upstream=upstream, window=window))
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.users",
                "--listen",
                f"127.0.0.1:{upstream}",
                "--log-level",
                "WARNING",
            ]
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "--log-level", "WARNING"]
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=15)
            baseline = rss_mib(gateway.pid)
            started = time.perf_counter()
            peak = asyncio.run(_drive(port, users, concurrency, gateway.pid))
            duration = time.perf_counter() - started
            print(f"{users} users in {duration:.0f} s; RSS {baseline:.0f} -> peak {peak:.0f} MiB", flush=True)
            # One more window, plus the sweeper's interval, and a few calls to keep the loop awake.
            time.sleep(window + 5)
            settled = rss_mib(gateway.pid)
            print(f"after the window: RSS {settled:.0f} MiB", flush=True)
            return {
                "users": users,
                "seconds": duration,
                "baseline_mib": baseline,
                "peak_mib": peak,
                "settled_mib": settled,
            }
        finally:
            for process in (gateway, service):
                process.terminate()
                process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=30, help="seconds of the rate-limit window")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--storage-only", action="store_true")
    args = parser.parse_args()
    if args.storage_only:
        result: object = storage_only(args.users, args.window)
    else:
        result = through_gateway(args.users, args.window, args.concurrency)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
