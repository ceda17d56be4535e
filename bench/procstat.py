"""CPU time of a whole process tree, read from ``/proc`` (Linux).

``/proc/PID/stat`` fields 14 and 15 (utime, stime) cover every thread of the process; fields 16 and
17 (cutime, cstime) cover its children that have exited and been waited for. A tree's CPU time is the
sum of all four over the process and all its live descendants: a live child's time is not yet in its
parent's cutime, so nothing is counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the bench needs; times in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """CPU time of the process, its threads and its reaped children."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line.

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses, so
    the fields after it are counted from the last ``)``.

    Raises:
        ValueError: the text is not a stat line.
    """
    head, paren, tail = text.rpartition(")")
    if not paren or "(" not in head:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    fields = tail.split()
    # fields[0] is field 3 (state): field N of proc(5) is fields[N - 3].
    if len(fields) < 15:
        raise ValueError(f"a /proc/PID/stat line with too few fields: {text[:80]!r}")
    return ProcStat(
        pid=int(head.partition("(")[0]),
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def read_stat(pid: int) -> ProcStat:
    """The stat of a live process.

    Raises:
        ProcessLookupError: no such process (any more).
    """
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from every thread's ``children`` list, or by scanning /proc)."""
    task_dir = PROC / str(pid) / "task"
    found: set[int] = set()
    try:
        listed = [task / "children" for task in task_dir.iterdir()]
        if listed and listed[0].exists():
            for path in listed:
                try:
                    found.update(int(child) for child in path.read_text().split())
                except FileNotFoundError:  # the thread ended meanwhile
                    continue
            return sorted(found)
    except FileNotFoundError:
        return []
    # Kernels without CONFIG_PROC_CHILDREN: find the children by their parent pid.
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if read_stat(int(entry.name)).ppid == pid:
                    found.add(int(entry.name))
            except (ProcessLookupError, ValueError, OSError):
                continue
    return sorted(found)


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    pids = [pid]
    index = 0
    while index < len(pids):
        pids.extend(children(pids[index]))
        index += 1
    return pids


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``, its threads and its descendants.

    Raises:
        ProcessLookupError: ``pid`` itself is gone (a descendant that ends meanwhile is skipped).
    """
    total = read_stat(pid).ticks
    for descendant in tree(pid)[1:]:
        try:
            total += read_stat(descendant).ticks
        except ProcessLookupError:
            continue
    return total / CLOCK_TICKS


def parse_cpu_busy(text: str) -> dict[int | None, int]:
    """Busy clock ticks from ``/proc/stat``: everything but idle and iowait, per CPU number, and for
    all CPUs together under ``None``.

    Raises:
        ValueError: no aggregate ``cpu`` line.
    """
    busy: dict[int | None, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].startswith("cpu"):
            # user nice system idle iowait irq softirq steal [guest guest_nice: already in user, nice]
            times = [int(value) for value in fields[1:9]]
            number = fields[0].removeprefix("cpu")
            busy[int(number) if number else None] = sum(times) - times[3] - times[4]
    if None not in busy:
        raise ValueError("no 'cpu' line in /proc/stat")
    return busy


def busy_seconds(cpus: Iterable[int] | None = None) -> float:
    """CPU seconds the given CPUs (all of them when None) have been busy since boot."""
    busy = parse_cpu_busy((PROC / "stat").read_text())
    ticks = busy[None] if cpus is None else sum(busy[cpu] for cpu in cpus)
    return ticks / CLOCK_TICKS
