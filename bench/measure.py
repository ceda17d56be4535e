"""One timed run: h2load against one path, with the CPU every server used while it ran."""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.loadgen import GrpcTarget, HttpTarget, Load, LoadError, run_h2load
from bench.payloads import Call
from bench.servers import Server

H2LOAD_CPU = "h2load"
OTHER_CPU = "other"
"""CPU time other processes took on the CPUs the run used: a high value means noisy numbers."""


@dataclass(frozen=True)
class Run:
    """The raw numbers of one run."""

    round: int
    scenario: str
    path: str
    load: str
    requests: int
    seconds: float
    """h2load's own measure of the run, from the first connection to the last reply."""
    wall_seconds: float
    """The interval the CPU times were read over: h2load's whole process, start to exit."""
    req_per_s: float
    p50_us: float
    p99_us: float
    cpu_seconds: dict[str, float]
    """CPU seconds during the run of every server (by name), of h2load, and of other processes on
    the run's CPUs (``other``)."""
    data_bytes: int
    header_bytes: int
    quiet_wait_seconds: float
    """How long the bench waited for other processes to calm down before this run."""

    def cpu_us_per_call(self, name: str) -> float:
        return self.cpu_seconds[name] / self.requests * 1e6

    def busy_share(self, *names: str) -> float:
        """CPU time of the named processes during the run, as a fraction of one CPU."""
        return sum(self.cpu_seconds[name] for name in names) / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def other_cpu_share(self) -> float:
        """Other processes' CPU time on the run's CPUs, as a fraction of one CPU."""
        return self.cpu_seconds[OTHER_CPU] / self.wall_seconds if self.wall_seconds else 0.0


def other_cpu_share(servers: Sequence[Server], window: float) -> float:
    """How much of a CPU processes other than ``servers`` (and this one) kept busy over ``window`` seconds."""
    before = sum(server.cpu_seconds() for server in servers)
    machine_before = procstat.busy_seconds()
    time.sleep(window)
    ours = sum(server.cpu_seconds() for server in servers) - before
    return max(0.0, procstat.busy_seconds() - machine_before - ours) / window


class QuietWait:
    """Before each run, waits (within a budget for the whole bench) until the rest of the machine is quiet.

    Other work on the machine, a test suite say, steals CPU from the servers and skews every number.
    """

    WINDOW = 0.3

    def __init__(self, budget: float, threshold: float) -> None:
        self.budget = budget
        self.threshold = threshold
        self.waited = 0.0

    def wait(self, servers: Sequence[Server]) -> float:
        """Seconds waited this time; returns at once when the budget is spent."""
        started = time.monotonic()
        while self.waited + (time.monotonic() - started) < self.budget:
            if other_cpu_share(servers, self.WINDOW) <= self.threshold:
                break
        spent = time.monotonic() - started
        self.waited += spent
        return spent


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(
    *,
    h2load: str,
    target: GrpcTarget | HttpTarget,
    call: Call,
    load: Load,
    servers: Sequence[Server],
    log_file: Path,
    cpu: int | None,
    cpus: frozenset[int] | None,
    round_number: int,
    scenario: str,
    path: str,
    quiet_wait_seconds: float = 0.0,
) -> Run:
    """Run h2load (on CPU ``cpu``) once and read every server's CPU time around it.

    ``cpus``: the CPUs the processes of this path are pinned to, where other processes' CPU time
    counts as interference (None: not pinned, all CPUs count).

    Raises:
        LoadError: a call failed, or the replies were not all the expected bytes (a gRPC error,
            such as a rate-limit refusal, comes back as HTTP 200 with no data).
    """
    before = {server.name: server.cpu_seconds() for server in servers}
    busy_before = procstat.busy_seconds(cpus)
    children_before = _children_cpu_seconds()
    started = time.monotonic()
    result = run_h2load(h2load, target, load, log_file, cpu)
    wall_seconds = time.monotonic() - started
    children_after = _children_cpu_seconds()
    busy_after = procstat.busy_seconds(cpus)
    cpu_seconds = {server.name: server.cpu_seconds() - before[server.name] for server in servers}
    cpu_seconds[H2LOAD_CPU] = children_after - children_before
    located = {server.name: server.cpu for server in servers} | {H2LOAD_CPU: cpu}
    ours = sum(t for name, t in cpu_seconds.items() if cpus is None or located[name] in cpus)
    cpu_seconds[OTHER_CPU] = max(0.0, busy_after - busy_before - ours)
    summary = result.summary
    expected = call.reply_bytes * load.requests
    if summary.data_bytes != expected:
        raise LoadError(
            f"{path}: {summary.data_bytes} bytes of replies, not the {expected} that {load.requests} correct "
            f"replies make ({call.reply_bytes} each); some calls ended in a gRPC error"
        )
    return Run(
        round=round_number,
        scenario=scenario,
        path=path,
        load=str(load),
        requests=load.requests,
        seconds=summary.seconds,
        wall_seconds=wall_seconds,
        req_per_s=summary.req_per_s,
        p50_us=result.p50_us,
        p99_us=result.p99_us,
        cpu_seconds=cpu_seconds,
        data_bytes=summary.data_bytes,
        header_bytes=summary.header_bytes,
        quiet_wait_seconds=quiet_wait_seconds,
    )
