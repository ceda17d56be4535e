"""An in-process rate-limit storage whose memory stays bounded under a flood of distinct keys.

``limits``' own memory storage reclaims expired moving-window keys with one pass over every key
and one thread hop per key, so under a flood of distinct users it falls behind and memory grows
(``python -m bench.flood --storage-only`` measures both on a million keys). This storage keeps the
same interface (it is a ``limits`` storage: every strategy works on it) but indexes keys by when
they expire, so reclaiming costs time in proportion to what expired, never to what is stored. Its
owner calls ``sweep`` on a beat (the engine's tick), so reclaiming needs no task or thread of its own.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict

from limits.aio.storage import MemoryStorage


class _ExpiryIndex:
    """Keys ordered by deadline, for keys that all live for the same number of seconds."""

    def __init__(self) -> None:
        self.deadlines: OrderedDict[str, float] = OrderedDict()

    def touch(self, key: str, deadline: float) -> None:
        self.deadlines[key] = deadline
        self.deadlines.move_to_end(key)

    def pop_expired(self, now: float, limit: int) -> list[str]:
        expired: list[str] = []
        while self.deadlines and len(expired) < limit:
            key, deadline = next(iter(self.deadlines.items()))
            if deadline > now:
                break
            del self.deadlines[key]
            expired.append(key)
        return expired


class BoundedMemoryStorage(MemoryStorage):
    """``limits``' async memory storage with expiry in O(expired keys).

    One thread, one process: every operation below runs without awaiting, so no lock is
    needed for a read-modify-write to be atomic.
    """

    STORAGE_SCHEME = ["async+bounded-memory"]  # noqa: RUF012 (declared so by limits)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        # Hit times per key, oldest first: a list, as a deque costs a 64-slot block per key.
        self.windows: dict[str, list[float]] = {}
        self._indexes: dict[float, _ExpiryIndex] = {}

    def __len__(self) -> int:
        """How many keys are held (counters and moving windows)."""
        return len(self.storage) + len(self.windows)

    def _index(self, key: str, lifetime: float, deadline: float) -> None:
        index = self._indexes.get(lifetime)
        if index is None:
            index = self._indexes[lifetime] = _ExpiryIndex()
        index.touch(key, deadline)

    def sweep(self, limit: int) -> int:
        """Drop up to ``limit`` expired keys now; how many were dropped."""
        dropped = 0
        for lifetime, index in list(self._indexes.items()):
            for key in index.pop_expired(time.time(), limit - dropped):
                self._drop(key)
                dropped += 1
            if not index.deadlines:
                del self._indexes[lifetime]
            if dropped >= limit:
                break
        return dropped

    def _drop(self, key: str) -> None:
        self.storage.pop(key, None)
        self.expirations.pop(key, None)
        self.windows.pop(key, None)

    # Counters: fixed window and sliding-window counter.

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        if self.expirations.get(key, 0) <= now:
            self.storage[key] = 0
            self.expirations[key] = now + expiry
            self._index(key, expiry, now + expiry)
        self.storage[key] += amount
        return self.storage[key]

    async def decr(self, key: str, amount: int = 1) -> int:
        if self.expirations.get(key, 0) <= time.time():
            return 0
        self.storage[key] = max(self.storage[key] - amount, 0)
        return self.storage[key]

    async def get(self, key: str) -> int:
        if self.expirations.get(key, 0) <= time.time():
            return 0
        return self.storage.get(key, 0)

    async def get_expiry(self, key: str) -> float:
        return self.expirations.get(key, time.time())

    async def clear(self, key: str) -> None:
        self._drop(key)

    async def reset(self) -> int | None:
        count = len(self)
        self.storage.clear()
        self.expirations.clear()
        self.windows.clear()
        self._indexes.clear()
        return count

    # Moving window: the timestamps of the hits inside the window, oldest first.

    def _live_window(self, key: str, expiry: float, now: float) -> list[float]:
        window = self.windows.get(key)
        if window is None:
            return []
        expired = bisect.bisect_right(window, now - expiry)
        if expired:
            del window[:expired]
        return window

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        window = self._live_window(key, expiry, now)
        if len(window) + amount > limit:
            return False
        if not window:
            self.windows[key] = window
        window.extend([now] * amount)
        self._index(key, expiry, now + expiry)
        return True

    def spend_in_window(self, key: str, limit: int, expiry: int) -> tuple[bool, int, float]:
        """One hit of a moving window, and the window after it: (allowed, remaining, reset time).

        What ``limits``' moving-window strategy makes of ``acquire_entry`` then ``get_moving_window``,
        in one step on one reading of the clock: the strategy asks twice, each time making the key
        anew and passing through the storage's error wrappers, and this is every call's path.
        """
        now = time.time()
        window = self._live_window(key, expiry, now)
        allowed = len(window) < limit
        if allowed:
            if not window:
                self.windows[key] = window
            window.append(now)
            self._index(key, expiry, now + expiry)
        if not window:
            return allowed, limit, now + expiry
        return allowed, limit - len(window), window[0] + expiry

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        window = self._live_window(key, expiry, now)
        if not window:
            return now, 0
        # As in limits: the oldest hit that still counts; start + expiry is when room comes back.
        return window[0], len(window)
