"""The load generator: h2load (nghttp2) driving gRPC calls, and what it reports.

h2load speaks plain HTTP/2, which is all a gRPC call is: a POST to ``/package.Service/Method`` with
``content-type: application/grpc`` and ``te: trailers``, whose body is length-prefixed messages. It
counts a call as succeeded on HTTP 200 even when the gRPC status in the trailers is an error, so the
bench checks the bytes of reply data too (an error reply carries none) and verifies each path with a
real gRPC client before timing it.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

H2LOAD = "h2load"
APT_PACKAGE = "nghttp2-client"


class LoadError(Exception):
    """h2load could not be found, installed or run, or it reported failed calls."""


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass(frozen=True)
class Load:
    """How hard to drive: ``clients`` connections, ``streams`` concurrent calls each, ``requests`` in all."""

    clients: int
    streams: int
    requests: int

    def args(self) -> list[str]:
        return ["-n", str(self.requests), "-c", str(self.clients), "-m", str(self.streams)]

    def __str__(self) -> str:
        return f"-c{self.clients} -m{self.streams} -n{self.requests}"


@dataclass(frozen=True)
class Summary:
    """h2load's closing report."""

    seconds: float
    req_per_s: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    data_bytes: int
    header_bytes: int


_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx", re.MULTILINE)
_TRAFFIC = re.compile(r"^traffic: .*?, \S+ \((\d+)\) headers .*?, \S+ \((\d+)\) data", re.MULTILINE)
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_summary(text: str) -> Summary:
    """Parse the report h2load prints on stdout.

    Raises:
        LoadError: a line the bench relies on is missing (h2load failed, or its format changed).
    """
    found = [pattern.search(text) for pattern in (_FINISHED, _REQUESTS, _STATUS, _TRAFFIC)]
    finished, requests, status, traffic = found
    if finished is None or requests is None or status is None or traffic is None:
        raise LoadError(f"h2load printed no complete report:\n{text.strip()[-2000:]}")
    counts = [int(value) for value in requests.groups()]
    return Summary(
        seconds=float(finished.group(1)) * _UNIT_SECONDS[finished.group(2)],
        req_per_s=float(finished.group(3)),
        total=counts[0],
        started=counts[1],
        done=counts[2],
        succeeded=counts[3],
        failed=counts[4],
        errored=counts[5],
        timeout=counts[6],
        status_2xx=int(status.group(1)),
        header_bytes=int(traffic.group(1)),
        data_bytes=int(traffic.group(2)),
    )


def parse_log(text: str) -> tuple[list[int], int]:
    """Parse h2load's ``--log-file``: (microseconds of each successful request, number of failures).

    Each row is: start time (µs since the epoch), HTTP status (-1 for a failed stream), µs until the
    end of the response. Rows with any status but 200 count as failures.
    """
    durations: list[int] = []
    failures = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise LoadError(f"unexpected h2load log row: {line!r}")
        if fields[1] == "200":
            durations.append(int(fields[2]))
        else:
            failures += 1
    return durations, failures


def percentile(values: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (need not be sorted); ``fraction`` in (0, 1]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    # The smallest value with at least ``fraction`` of all values at or below it; the epsilon keeps
    # 0.07 * 100 (= 7.000000000000001) from rounding up to the next rank.
    rank = max(1, math.ceil(len(ordered) * fraction - 1e-9))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class LoadResult:
    summary: Summary
    p50_us: float
    p99_us: float


def ensure_h2load() -> str:
    """The path of h2load, installing Debian's nghttp2-client with apt-get when it is missing.

    Raises:
        LoadError: it is missing and could not be installed.
    """
    found = shutil.which(H2LOAD)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise LoadError(f"{H2LOAD} is not installed and there is no apt-get; install nghttp2's h2load")
    print(f"bench: {H2LOAD} is missing; installing {APT_PACKAGE} with apt-get", flush=True)
    install = [apt, "install", "-y", "-q", APT_PACKAGE]
    if subprocess.run(install, check=False, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([apt, "update", "-q"], check=False, stdout=subprocess.DEVNULL)
        if subprocess.run(install, check=False, stdout=subprocess.DEVNULL).returncode != 0:
            raise LoadError(f"could not install {APT_PACKAGE}: run `apt-get install {APT_PACKAGE}` as root")
    found = shutil.which(H2LOAD)
    if found is None:
        raise LoadError(f"{APT_PACKAGE} was installed but {H2LOAD} is still not on PATH")
    return found


def h2load_version(h2load: str) -> str:
    result = subprocess.run([h2load, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


@dataclass(frozen=True)
class GrpcTarget:
    """One gRPC method at one address, called with one fixed request."""

    address: str
    method: str
    """``/package.Service/Method``"""
    body: Path
    """A file holding the request body: one length-prefixed message."""
    metadata: tuple[tuple[str, str], ...] = ()

    def url(self) -> str:
        return f"http://{self.address}{self.method}"

    def h2load_args(self) -> list[str]:
        headers = [("content-type", "application/grpc"), ("te", "trailers"), *self.metadata]
        return ["-d", str(self.body), *(arg for name, value in headers for arg in ("-H", f"{name}: {value}"))]


@dataclass(frozen=True)
class HttpTarget:
    """One HTTP/1.1 GET, or POST of ``body`` (a file), with keep-alive (h2load --h1)."""

    address: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: Path | None = None

    def url(self) -> str:
        return f"http://{self.address}{self.path}"

    def h2load_args(self) -> list[str]:
        posted = [] if self.body is None else ["-d", str(self.body)]
        return ["--h1", *posted, *(arg for name, value in self.headers for arg in ("-H", f"{name}: {value}"))]


def run_h2load(
    h2load: str,
    target: GrpcTarget | HttpTarget,
    load: Load,
    log_file: Path,
    cpu: int | None = None,
    timeout: float = 300.0,
) -> LoadResult:
    """Drive ``target`` with ``load``; h2load runs on CPU ``cpu`` when given.

    Raises:
        LoadError: h2load failed, or not every call got an HTTP 200 reply.
    """
    command = [
        h2load,
        *load.args(),
        *target.h2load_args(),
        "--log-file",
        str(log_file),
        target.url(),
    ]
    log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise LoadError(f"h2load took more than {timeout:.0f} s: {' '.join(command)}") from error
    if result.returncode != 0:
        raise LoadError(f"h2load exited with {result.returncode}:\n{result.stdout}{result.stderr}")
    summary = parse_summary(result.stdout)
    durations, failures = parse_log(log_file.read_text())
    if summary.succeeded != load.requests or summary.status_2xx != load.requests or failures:
        raise LoadError(
            f"{target.url()}: {summary.succeeded} of {load.requests} calls succeeded "
            f"({summary.status_2xx} HTTP 2xx, {failures} failed in the log)"
        )
    return LoadResult(summary, percentile(durations, 0.50), percentile(durations, 0.99))
