"""The /proc readers: CPU time of a process tree, and how busy the CPUs are."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.procstat import (
    CLOCK_TICKS,
    busy_seconds,
    children,
    parse_cpu_busy,
    parse_stat,
    read_stat,
    tree,
    tree_cpu_seconds,
)

# proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
#          utime stime cutime cstime ...
STAT = "4242 (python -m (odd) name) S 17 4242 4242 0 -1 4194560 900 0 0 0 153 27 8 2 20 0 9 0 1234 0 0"


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    stat = parse_stat(STAT)
    assert (stat.pid, stat.ppid) == (4242, 17)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (153, 27, 8, 2)
    assert stat.ticks == 190


@pytest.mark.parametrize("text", ["", "4242 python S 1", "4242 (python) S 1 2 3"])
def test_parse_stat_rejects_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError, match="stat line"):
        parse_stat(text)


def test_read_stat_of_no_such_process() -> None:
    with pytest.raises(ProcessLookupError):
        read_stat(2**22 + 1)  # above the largest pid Linux hands out


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_tree_cpu_seconds_grows_with_this_process_work() -> None:
    before = tree_cpu_seconds(os.getpid())
    _burn(0.2)
    assert tree_cpu_seconds(os.getpid()) - before >= 0.15


def test_tree_cpu_seconds_counts_live_children() -> None:
    # The child burns CPU, then waits on its stdin so that it is still alive when measured.
    code = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    code += "print('done', flush=True)\nsys.stdin.read()\n"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        try:
            assert child.stdout.readline() == "done\n"
            assert child.pid in children(os.getpid())
            assert child.pid in tree(os.getpid())
            assert tree_cpu_seconds(child.pid) >= 0.25
            alone = read_stat(os.getpid()).ticks / CLOCK_TICKS
            assert tree_cpu_seconds(os.getpid()) - alone >= 0.25
        finally:
            child.stdin.close()
            child.wait()


def test_parse_cpu_busy_leaves_out_idle_and_iowait() -> None:
    text = "cpu  100 5 30 1000 40 2 3 4 0 0\ncpu0 60 2 15 500 20 1 1 2 0 0\ncpu1 40 3 15 500 20 1 2 2 0 0\n"
    text += "intr 12345\nctxt 678\n"
    assert parse_cpu_busy(text) == {None: 100 + 5 + 30 + 2 + 3 + 4, 0: 60 + 2 + 15 + 1 + 1 + 2, 1: 63}


def test_parse_cpu_busy_needs_the_cpu_line() -> None:
    with pytest.raises(ValueError, match="no 'cpu' line"):
        parse_cpu_busy("intr 1\n")


def test_busy_seconds_of_some_cpus_is_part_of_all() -> None:
    assert 0 < busy_seconds([0]) <= busy_seconds()
