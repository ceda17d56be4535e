"""Does one user's flood slow another user's calls? ``python -m bench.fairness``.

A gateway (memory storage, 5 calls per 30 s per user_id) in front of the user service. User 102's
calls, one at a time, are timed alone, then while 16 concurrent callers flood user 101 (refused
after its fifth call), then while the same 16 callers spread the same load over distinct users
(every call passes). Prints p50 and p99 of user 102's calls in each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import count, repeat
from pathlib import Path

import grpc
from shop.users.v1 import users_pb2

from bench.flood import CONFIG

KEY = (("x-api-key", "secret-key"),)
SAMPLES = 400
FLOODERS = 16


async def _phase(port: int, flood_users: Iterator[int] | None) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/shop.users.v1.UserService/GetUser")
        stop = asyncio.Event()

        async def flood() -> None:
            assert flood_users is not None
            while not stop.is_set():
                body = users_pb2.GetUserRequest(user_id=next(flood_users)).SerializeToString()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call(body, metadata=KEY, timeout=5)

        flooders = [asyncio.create_task(flood()) for _ in range(FLOODERS if flood_users is not None else 0)]
        await asyncio.sleep(0.5)
        durations = []
        # A budget of its own for every sample: user ids 10,000,000 and up, one call each.
        for sample in range(SAMPLES):
            body = users_pb2.GetUserRequest(user_id=10_000_000 + sample).SerializeToString()
            started = time.perf_counter()
            try:
                await call(body, metadata=KEY, timeout=5)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
            durations.append(time.perf_counter() - started)
        stop.set()
        await asyncio.gather(*flooders)
    quantiles = statistics.quantiles(durations, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        upstream, port = 50191, 50190
        config = Path(folder) / "fairness.toml"
        config.write_text(CONFIG.format(port=port, upstream=upstream, window=30))
        quiet = ["--log-level", "WARNING"]
        service = subprocess.Popen(
            [sys.executable, "-m", "services.users", "--listen", f"127.0.0.1:{upstream}", *quiet]
        )
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), *quiet])
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=15)
            phases: dict[str, Iterator[int] | None] = {
                "alone": None,
                f"{FLOODERS} callers flooding one user (refused)": repeat(101),
                f"{FLOODERS} callers over distinct users (passing)": count(20_000_000),
            }
            for name, flood_users in phases.items():
                p50, p99 = asyncio.run(_phase(port, flood_users))
                print(f"another user's calls, {name:48} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
        finally:
            for process in (gateway, service):
                process.terminate()
                process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
