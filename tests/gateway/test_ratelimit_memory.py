"""The bounded memory storage: exact counting, and expired keys reclaimed without any traffic."""

from __future__ import annotations

import asyncio

import limits
import pytest
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.policy.ratelimit.memory import BoundedMemoryStorage


@pytest.mark.parametrize(
    "strategy", [MovingWindowRateLimiter, SlidingWindowCounterRateLimiter, FixedWindowRateLimiter]
)
async def test_counts_like_limits(strategy: type[MovingWindowRateLimiter]) -> None:
    limiter = strategy(BoundedMemoryStorage())
    item = limits.parse("3/minute")
    assert [await limiter.hit(item, "rule", "user") for _ in range(4)] == [True, True, True, False]
    assert await limiter.hit(item, "rule", "other user")
    stats = await limiter.get_window_stats(item, "rule", "user")
    assert stats.remaining == 0


async def test_expired_keys_are_reclaimed() -> None:
    storage = BoundedMemoryStorage()
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    item = limits.parse("2/second")
    for user in range(5000):
        await moving.hit(item, "moving", str(user))
        await fixed.hit(item, "fixed", str(user))
    assert len(storage) == 10_000
    assert storage.sweep(20_000) == 0  # nothing has expired yet
    await asyncio.sleep(1.1)
    # The engine's tick sweeps a batch at a time; nothing else needs to happen for keys to go.
    assert storage.sweep(4000) == 4000
    assert storage.sweep(20_000) == 6000
    assert len(storage) == 0
    # A key that came back after expiring starts afresh.
    assert await moving.hit(item, "moving", "1")
    assert (await moving.get_window_stats(item, "moving", "1")).remaining == 1


async def test_moving_window_frees_one_slot_at_a_time() -> None:
    limiter = MovingWindowRateLimiter(BoundedMemoryStorage())
    item = limits.parse("2/second")
    assert await limiter.hit(item, "r", "u")
    await asyncio.sleep(0.6)
    assert await limiter.hit(item, "r", "u")
    assert not await limiter.hit(item, "r", "u")
    await asyncio.sleep(0.5)  # the first hit has left the window, the second has not
    assert await limiter.hit(item, "r", "u")
    assert not await limiter.hit(item, "r", "u")


async def test_one_step_of_the_moving_window_is_limits_hit_then_its_stats() -> None:
    """``spend_in_window`` answers what ``limits``' moving-window strategy answers, hit by hit, on
    twin storages fed the same calls (interleaved users, a refusal, a slot freed by time)."""
    ours, theirs = BoundedMemoryStorage(), BoundedMemoryStorage()
    strategy = MovingWindowRateLimiter(theirs)
    item = limits.parse("3/second")
    expiry = item.get_expiry()

    async def both(user: str) -> tuple[tuple[bool, int], tuple[bool, int]]:
        key = item.key_for("rule", user)
        allowed, remaining, reset_time = ours.spend_in_window(key, item.amount, expiry)
        expected = await strategy.hit(item, "rule", user)
        stats = await strategy.get_window_stats(item, "rule", user)
        assert reset_time == pytest.approx(stats.reset_time, abs=0.05)
        return (allowed, remaining), (expected, stats.remaining)

    seen = []
    for user in ["a", "a", "b", "a", "a", "b"]:
        mine, limits_own = await both(user)
        assert mine == limits_own
        seen.append(mine)
    assert seen == [(True, 2), (True, 1), (True, 2), (True, 0), (False, 0), (True, 1)]
    await asyncio.sleep(1.05)  # every hit has left the window
    assert await both("a") == ((True, 2), (True, 2))
    assert ours.windows.keys() == theirs.windows.keys()
