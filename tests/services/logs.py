"""Reading the JSON log lines a service process writes to stderr."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

from tests.support.processes import stderr_text


def log_entries(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Every JSON object line on ``proc``'s stderr so far (grpc's own plain-text lines are skipped)."""
    entries = []
    for line in stderr_text(proc).splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


async def wait_for_entry(
    proc: subprocess.Popen[str], after: int = 0, within: float = 5.0, **fields: Any
) -> dict[str, Any]:
    """The first log entry, from index ``after`` on, that has all of ``fields``.

    A call's line is written when its handler finishes, which can be just after the client saw
    the status, so this polls.
    """
    deadline = time.monotonic() + within
    while True:
        for entry in log_entries(proc)[after:]:
            if all(entry.get(name) == value for name, value in fields.items()):
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no log entry with {fields} after {after}; stderr:\n{stderr_text(proc)}")
        await asyncio.sleep(0.02)
