"""Verified tokens, remembered by their digest until they expire: a steady caller's token is verified once.

Bounded: at most ``capacity`` tokens. When it is full, the expired ones go first; if that frees
less than a tenth, the oldest tenth goes too, so that a flood of distinct tokens costs each insert
a constant share of one sweep. Looked up from the door's threads without a lock (one dict read);
filled under one.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")

CAPACITY = 10_000


class TokenCache(Generic[T]):
    """Values by token digest, each until its own expiry (epoch seconds)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._entries: dict[bytes, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> T | None:
        """The value put for ``digest``, while it has not expired at ``now``."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, digest: bytes, value: T, expires: float, now: float) -> None:
        with self._lock:
            entries = self._entries
            if len(entries) >= self._capacity and digest not in entries:
                self._make_room(entries, now)
            entries[digest] = (expires, value)

    def _make_room(self, entries: dict[bytes, tuple[float, T]], now: float) -> None:
        for digest in [digest for digest, (expires, _) in entries.items() if expires <= now]:
            del entries[digest]
        tenth = max(1, self._capacity // 10)
        while len(entries) > self._capacity - tenth:
            del entries[next(iter(entries))]
