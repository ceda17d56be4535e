"""Upstream faults: an upstream that comes back is used at once; a call that arrives while the
gateway drains is refused at once, not left to its deadline."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc

from tests.gateway.ops_support import (
    SLOW_BASE,
    USERS,
    gateway_beside,
    get_user,
    route,
    toml,
    upstream,
    wait_for,
    write,
)
from tests.support.processes import free_port

# The outage the issue measured (6.8 s until calls succeeded again, before [upstream_reconnect]).
# grpc's reconnect backoff (0.1 s, x1.6 per attempt) reaches its 2 s cap after about 6 s, so a
# longer outage waits no longer between attempts.
OUTAGE = 20.0


async def test_an_upstream_that_returns_is_used_within_the_backoff_cap(tmp_path: Path) -> None:
    port = free_port()
    async with upstream("users", port):
        config = write(tmp_path, toml(route(USERS, f"127.0.0.1:{port}")))
        async with gateway_beside(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
            assert (await get_user(channel, 5))[0] == grpc.StatusCode.OK
    # The upstream is gone; the gateway's channel keeps trying it, ever more slowly, up to max (2 s).
    async with gateway_beside(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
        assert (await get_user(channel, 5))[0] == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(OUTAGE)
        async with upstream("users", port):
            listening = time.monotonic()
            while (await get_user(channel, 5, deadline=1))[0] != grpc.StatusCode.OK:
                assert time.monotonic() - listening < 2.0, "the upstream was not used again within 2 s"
                await asyncio.sleep(0.02)


async def test_a_call_during_the_drain_is_refused_at_once(tmp_path: Path) -> None:
    async with upstream("users") as (port, seen):
        config = write(tmp_path, toml(route(USERS, f"127.0.0.1:{port}"), grace=3))
        async with gateway_beside(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
            assert (await get_user(channel, 5))[0] == grpc.StatusCode.OK
            # One slow call keeps the drain going; the channel stays connected meanwhile.
            slow = asyncio.create_task(get_user(channel, SLOW_BASE + 1500))
            await wait_for(lambda: seen.started >= 2, what="the slow call upstream")
            gateway.process.send_signal(signal.SIGTERM)
            await wait_for(lambda: '"message": "shutting down"' in gateway.log(), what="the drain")
            await asyncio.sleep(0.05)
            started = time.monotonic()
            code, _, _ = await get_user(channel, 6, deadline=2)
            took = time.monotonic() - started
            assert code == grpc.StatusCode.UNAVAILABLE
            assert took < 0.5, f"refused after {took:.3f} s"  # at once, not at the 2 s deadline
            assert (await slow)[0] == grpc.StatusCode.OK  # what had started still finishes
