"""Failed-auth throttling: an address that sent too many invalid keys is refused for a while.

Counting is per fixed window that starts at an address's first failure. Once an address has
``max_failures`` in its window, every call from it is refused, without looking at its key, until
the window ends: guessing keys gets no answers. Memory is bounded: at most ``capacity`` addresses
are tracked, the oldest windows going first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    failures: int


class FailedAuthLockout:
    """Counts invalid keys per address; tells whether an address is locked out, and for how long."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._capacity = capacity
        self._clock = clock
        # Insertion order is window-start order: a new window is always appended at the end.
        self._windows: dict[str, _Window] = {}
        # When the last lockout ends; until then calls are checked per address.
        self._locked_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def any_locked(self) -> bool:
        """Whether some address may be locked out now: one clock read, the cost every call pays."""
        return self._locked_until > 0.0 and self._clock() < self._locked_until

    def locked_for(self, address: str) -> float:
        """Seconds ``address`` stays locked out; 0 when it may call."""
        window = self._windows.get(address)
        if window is None or window.failures < self._max:
            return 0.0
        return max(0.0, window.start + self._window - self._clock())

    def record_failure(self, address: str) -> None:
        if not self.enabled:
            return
        now = self._clock()
        window = self._windows.get(address)
        if window is None or now - window.start >= self._window:
            self._windows.pop(address, None)
            self._forget_old(now)
            window = self._windows[address] = _Window(now, 0)
        window.failures += 1
        if window.failures >= self._max:
            self._locked_until = max(self._locked_until, window.start + self._window)

    def _forget_old(self, now: float) -> None:
        """Drop windows that ended, and the oldest ones beyond capacity; cheap, from the front."""
        while self._windows:
            address, oldest = next(iter(self._windows.items()))
            if now - oldest.start < self._window and len(self._windows) < self._capacity:
                return
            del self._windows[address]
