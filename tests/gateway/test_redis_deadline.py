"""The storage timeout is Redis's time, not the gateway's: a decision whose reply came back in time
is not failed because the gateway's event loop was too busy to read it (a burst of decisions on a
loaded machine, a user's step that blocks), and one that Redis never answers still fails on time.

Against a real redis-server, through the store the gateway's rate limiter uses.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.policy.ratelimit.connection import STALLED_SECONDS
from gateway.policy.ratelimit.remote import RedisStore
from gateway.policy.ratelimit.script import STRATEGY_CODES
from tests.support.redis import redis_server

pytestmark = pytest.mark.engine_neutral

TIMEOUT = 0.05
# One moving-window rule, 5 calls per 30 s: its two keys (one hash tag) and the script's arguments.
KEYS = [b"{deadline-test}:budget", b"{deadline-test}:previous"]
ARGUMENTS = [str(STRATEGY_CODES["moving-window"]).encode(), b"5", b"30"]


async def _decision(store: RedisStore) -> list[tuple[bool, int, int]]:
    async with store.within(TIMEOUT):
        return await store.spend(KEYS, ARGUMENTS)


async def test_a_reply_the_busy_loop_had_not_read_yet_still_decides() -> None:
    with redis_server() as redis:
        store = RedisStore(redis.url)
        assert await store.start()
        try:
            decisions = [asyncio.create_task(_decision(store)) for _ in range(6)]
            await asyncio.sleep(0)  # each decision has queued its command, to go out in one write
            # Then, right after that write, the loop is busy past the deadline, several times over:
            # Redis answers meanwhile, and its replies wait in the socket.
            asyncio.get_running_loop().call_soon(time.sleep, 4 * TIMEOUT)
            outcomes = await asyncio.gather(*decisions)
        finally:
            store.close()
    assert [allowed for ((allowed, _, _),) in outcomes] == [True] * 5 + [False]
    assert [remaining for ((_, remaining, _),) in outcomes] == [4, 3, 2, 1, 0, 0]


async def test_a_redis_that_does_not_answer_still_fails_on_time() -> None:
    with redis_server() as redis:
        store = RedisStore(redis.url)
        assert await store.start()
        redis.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await _decision(store)
            waited = time.monotonic() - started
        finally:
            redis.thaw()
            store.close()
    # Failed at the deadline, long before the connection itself would be given up as stalled.
    assert TIMEOUT <= waited < STALLED_SECONDS
