"""What a shared store's failures look like from outside: the mode in force, its metrics, its log.

Modes: ``shared`` while the store answers; when it fails, what ``on_storage_error`` says:
``open`` (calls allowed), ``closed`` (refused UNAVAILABLE) or ``local`` (each replica counts a
share of the budget in memory). One line is logged when the store fails, with the calls it has
touched so far (again every 10 s while it stays down), and one when it answers again, with the
calls touched in all and how long it was out.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

MODES = ("shared", "local", "open", "closed")

# What each on_storage_error does, as the mode it puts the replica in and the words for the log.
DEGRADED = {
    "allow": ("open", "allowed"),
    "deny": ("closed", "refused with UNAVAILABLE"),
    "local": ("local", "counted against this replica's share of the budget"),
}

# Seconds between two log lines about one outage.
LOG_INTERVAL = 10.0


class StoreWatcher(Protocol):
    """Told of every shared-store decision (the gateway's metrics implement it)."""

    def store_decided(self, seconds: float) -> None: ...

    def store_failed(self, kind: str) -> None: ...

    def store_mode(self, mode: str) -> None: ...


class StoreHealth:
    """The state of one shared store, across reloads (it lives as long as the store)."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.watcher: StoreWatcher | None = None
        self._mode = "shared"
        self._since: float | None = None  # when the current outage began (monotonic)
        self._calls = 0  # calls the current outage touched
        self._logged = False  # whether the current outage was logged (its end is logged then too)
        self._next_log = 0.0

    def watch(self, watcher: StoreWatcher | None) -> None:
        self.watcher = watcher
        if watcher is not None:
            watcher.store_mode(self._mode)

    def answered(self, seconds: float) -> None:
        watcher = self.watcher
        if watcher is not None:
            watcher.store_decided(seconds)
        if self._since is None:
            return
        if self._logged:
            log.warning(
                "rate-limit store available again",
                extra={
                    "storage": self._uri,
                    "calls": self._calls,
                    "outage_seconds": round(time.monotonic() - self._since, 3),
                },
            )
        self._since, self._mode = None, "shared"
        if watcher is not None:
            watcher.store_mode("shared")

    def failed(self, kind: str, error: str, seconds: float, on_error: str) -> None:
        mode, outcome = DEGRADED[on_error]
        watcher = self.watcher
        if watcher is not None:
            watcher.store_decided(seconds)
            watcher.store_failed(kind)
        now = time.monotonic()
        if self._since is None:
            self._since, self._calls, self._logged, self._mode = now, 0, False, mode
            if watcher is not None:
                watcher.store_mode(mode)
        self._calls += 1
        if now < self._next_log:
            return
        message = "rate-limit store still unavailable" if self._logged else "rate-limit store unavailable"
        log.warning(
            message,
            extra={"error": error, "kind": kind, "calls": self._calls, "calls_were": outcome},
        )
        self._logged = True
        self._next_log = now + LOG_INTERVAL
