"""The access log: one JSON object a line per call, made when the call ends.

It is written straight to its file or stream, not through ``logging``: a line per call is on the
hot path, and a LogRecord, a handler lock and a formatter per call would cost more than the line.
Each line is put together from pieces: the parts fixed per method are escaped once at start-up,
and only what the caller controls (its request id, say) is escaped per call. A line has the same
shape as the gateway's other JSON log lines (time, level, logger, message), so one parser reads both.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import time
from typing import TextIO

from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.config.schema import ConfigError

log = logging.getLogger(__name__)

# The logger whose level decides, with --log-level, whether the lines are written.
LOGGER = "access"

# Fewer than this many lines wait for the next tick.
MAX_PENDING_LINES = 256

# A compact, ASCII-only JSON string, as json.dumps writes it, from its C encoder.
_quote = json.encoder.encode_basestring_ascii


def quote(text: str | None) -> str:
    """``text`` as a JSON string, or ``null``."""
    return "null" if text is None else str(_quote(text))


class _Clock:
    """ISO 8601 UTC time with milliseconds; the date and time to the second are formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def at(self, now: float) -> str:
        """``now``, seconds since the epoch."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


class AccessLog:
    """Where access-log lines go, and whether they are written at all.

    Lines are gathered and written together on the engine's tick (every 0.25 s), when
    MAX_PENDING_LINES are waiting, and at close (Envoy flushes its access logs every second,
    nginx has ``buffer=`` and ``flush=``): a write(2) per call would cost more than the line,
    because it hands the GIL to grpc's threads. They are written in the order their calls ended:
    the native engine reports some ends a while after them (gateway/engines/native/decider.py).
    Each write holds whole lines and at most PIPE_BUF bytes, so that the lines of several workers
    writing one file or pipe never mix.

    Build it after logging is configured: the level check against ``--log-level`` is made once.

    Raises:
        ConfigError: the destination file cannot be opened for appending.
    """

    def __init__(self, config: AccessLogConfig) -> None:
        level = logging.getLevelName(config.level)
        self.enabled = config.enabled and logging.getLogger(LOGGER).isEnabledFor(level)
        self._head = '{"time":"'
        self._level = f'","level":"{config.level.lower()}","logger":"{LOGGER}","message":"call","request_id":'
        self._stream: TextIO | None = None  # stderr or stdout, flushed before each of our writes
        self._fd = -1
        self._owns_fd = False
        self._pending: list[tuple[float, str]] = []  # (when the call ended, its line)
        self._failed = False
        self._clock = _Clock()
        if not self.enabled:
            return
        if config.destination in ("stderr", "stdout"):
            self._stream = sys.stderr if config.destination == "stderr" else sys.stdout
            self._fd = self._stream.fileno()
            return
        try:
            self._fd = os.open(
                config.destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as error:
            raise ConfigError(
                f"access_log.destination: cannot open {config.destination} for appending ({error.strerror})"
            ) from None
        self._owns_fd = True

    def write(
        self,
        request_id: str,
        peer: str,
        client: str | None,
        method_part: str,
        code: str,
        seconds: float,
        rate_limit: str | None,
        trace: tuple[int, int] | None = None,
        ago: float = 0.0,
    ) -> None:
        """Add one line, of a call that ended ``ago`` seconds ago. ``method_part`` is made once per
        method by :func:`method_part`; ``trace``: the trace and span ids of the call's exported server
        span, None when it has none."""
        ids = "" if trace is None else f',"trace_id":"{trace[0]:032x}","span_id":"{trace[1]:016x}"'
        ended = time.time() - ago
        self._pending.append(
            (
                ended,
                f"{self._head}{self._clock.at(ended)}{self._level}{_quote(request_id)}{ids},"
                f'"peer":{_quote(peer)},"client":{quote(client)},{method_part},'
                f'"code":"{code}","duration_ms":{seconds * 1000:.3f},'
                f'"rate_limit":{quote(rate_limit)}}}\n',
            )
        )
        if len(self._pending) >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write every pending line now (the engine's tick calls it, every TICK_SECONDS)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        pending.sort(key=_ended)
        lines = [line for _, line in pending]
        try:
            if self._stream is not None:
                self._stream.flush()  # what logging wrote to the same stream goes first
            for chunk in _chunks(lines):
                os.write(self._fd, chunk)
        except (OSError, ValueError) as error:
            # A full disk must not fail the calls; say so once, in the process log.
            if not self._failed:
                self._failed = True
                log.error("access log write failed; lines are being lost", extra={"error": str(error)})

    def close(self) -> None:
        """Flush, and close the file if there is one."""
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
            self._owns_fd = False


def _ended(pending: tuple[float, str]) -> float:
    return pending[0]


def _chunks(lines: list[str]) -> list[bytes]:
    """The lines encoded, joined in chunks of whole lines of at most PIPE_BUF bytes (one if longer)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode()  # ASCII: every non-ASCII character was escaped
        if current and size + len(data) > select.PIPE_BUF:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(data)
        size += len(data)
    if current:
        chunks.append(b"".join(current))
    return chunks


def method_part(method: str, upstream: str | None) -> str:
    """The fixed fields of one method's lines, escaped once: ``"method":…,"upstream":…``."""
    return f'"method":{quote(method)},"upstream":{quote(upstream)}'
