"""The processes under test: the user service, the yardstick and the gateway, pinned to CPUs.

Every server gets the same environment (one ``GRPC_EXPERIMENTS`` setting for all), logs only
warnings (a log line per call would be measured too), and is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import procstat

PROJECT = Path(__file__).resolve().parent.parent
YARDSTICK = Path(__file__).resolve().parent / "reference" / "yardstick.py"
YARDSTICK_SHA256 = "da348d41621844b6f8f0b678ce5f0def67b2f1c266a914ef1e7ed9638acf63de"
NOTEBOOK = Path(__file__).resolve().parent / "reference" / "notebook_gateway.py"
NOTEBOOK_SHA256 = "4ee43647cbb532a3a03da5cc3e45331afe2b9893ba09925fd0c7c8cd608bc3db"
# shared GRPC-NOTES: set before grpc is imported, it cuts grpc.aio's CPU per call by 17-20%.
FAST_GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
START_SECONDS = 30.0
STOP_SECONDS = 5.0


class ServerError(Exception):
    """A server could not be started, or died."""


@dataclass(frozen=True)
class Placement:
    """Which CPU each kind of process runs on; None: wherever the kernel puts it."""

    load: int | None
    """h2load and the user service."""
    proxy: int | None
    """The yardstick and the gateways (one at a time is busy)."""

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        """Two CPUs or more (and taskset): the forwarders alone on CPU 1, the rest on CPU 0."""
        if pin and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset"):
            cpus = sorted(os.sched_getaffinity(0))
            return cls(load=cpus[0], proxy=cpus[1])
        return cls(load=None, proxy=None)


def server_environment(grpc_experiments: str) -> dict[str, str]:
    """This process's environment with ``GRPC_EXPERIMENTS`` set (or removed when empty)."""
    env = dict(os.environ)
    env.pop("GRPC_EXPERIMENTS", None)
    if grpc_experiments:
        env["GRPC_EXPERIMENTS"] = grpc_experiments
    return env


def check_references() -> None:
    """Refuse a yardstick or a notebook gateway that is not the unmodified reference.

    Raises:
        ServerError: a copy in bench/reference differs from its reference.
    """
    for copy, expected in ((YARDSTICK, YARDSTICK_SHA256), (NOTEBOOK, NOTEBOOK_SHA256)):
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        if digest != expected:
            raise ServerError(
                f"{copy.relative_to(PROJECT)} is not the reference (SHA-256 {digest}); "
                "restore the unmodified copy, see bench/reference/README.md"
            )


@dataclass
class Server:
    """A running server process."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log: Path
    cpu: int | None

    def cpu_seconds(self) -> float:
        """CPU seconds its process tree has used so far."""
        return procstat.tree_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(
                f"{self.name} exited with status {self.process.returncode}; its log ends:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        """Return once the server accepts HTTP/2 connections.

        Raises:
            ServerError: it exited, or was not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]
        with grpc.insecure_channel(self.address, options=options) as channel:
            ready = grpc.channel_ready_future(channel)
            while True:
                self.check_alive()
                try:
                    ready.result(timeout=0.2)
                    return
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        ready.cancel()
                        raise ServerError(
                            f"{self.name} did not listen on {self.address} within {timeout:.0f} s; "
                            f"its log ends:\n{self.log_tail()}"
                        ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _ProbedServer(Server):
    """A server that is ready once it answers PROBE with a reply beginning with ANSWER."""

    PROBE = b""
    ANSWER = b""

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        host, _, port = self.address.rpartition(":")
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with socket.create_connection((host, int(port)), timeout=0.2) as connection:
                    connection.sendall(self.PROBE)
                    if connection.recv(16).startswith(self.ANSWER):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not answer on {self.address} within {timeout:.0f} s")
            time.sleep(0.02)


class HttpServer(_ProbedServer):
    """An HTTP/1.1 server: ready once it answers a request (any status)."""

    PROBE = b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    ANSWER = b"HTTP/1.1 "


def _uvicorn(
    name: str, app: str, port: int, cpu: int | None, env: Mapping[str, str], log_dir: Path, cwd: Path
) -> Server:
    """``uvicorn APP`` with httptools and uvloop, warnings only, on CPU ``cpu`` when given."""
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process, log = spawn(name, args, cpu, env, log_dir, cwd)
    return HttpServer(name, f"127.0.0.1:{port}", process, log, cpu)


def http_endpoint(upstream: str, port: int, cpu: int | None, env: Mapping[str, str], log_dir: Path) -> Server:
    """The hand-written FastAPI endpoint (bench/http_endpoint.py) in front of ``upstream``."""
    return _uvicorn(
        "fastapi", "bench.http_endpoint:app", port, cpu, {**env, "UPSTREAM": upstream}, log_dir, PROJECT
    )


def notebook_gateway(port: int, cpu: int | None, env: Mapping[str, str], log_dir: Path) -> Server:
    """The notebook's gateway as it is, its limit raised out of reach."""
    environment = {**env, "NOTEBOOK_MAX_REQUESTS": str(10**9)}
    return _uvicorn(
        "notebook", "notebook_gateway:api_gateway", port, cpu, environment, log_dir, NOTEBOOK.parent
    )


class RedisServer(_ProbedServer):
    """A redis-server: ready once it answers PING."""

    PROBE = b"PING\r\n"
    ANSWER = b"+PONG"


def redis_server(name: str, address: str, cpu: int | None, log_dir: Path) -> Server:
    """redis-server on ``address``, nothing saved to disk; on CPU ``cpu`` when given.

    Raises:
        ServerError: no redis-server is installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server is not installed (apt-get install redis-server); the bench needs it")
    host, _, port = address.rpartition(":")
    args = ["--port", port, "--bind", host, "--save", "", "--appendonly", "no"]
    process, log = spawn(name, [binary, *args], cpu, os.environ, log_dir)
    return RedisServer(name, address, process, log, cpu)


def spawn(
    name: str, command: list[str], cpu: int | None, env: Mapping[str, str], log_dir: Path, cwd: Path = PROJECT
) -> tuple[subprocess.Popen[bytes], Path]:
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]  # taskset execs: the pid is the server's
    log = log_dir / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    return process, log


def start_server(
    name: str, args: list[str], address: str, cpu: int | None, env: Mapping[str, str], log_dir: Path
) -> Server:
    """Start ``python *args`` (this interpreter) from the project folder, on CPU ``cpu`` when given."""
    process, log = spawn(name, [sys.executable, *args], cpu, env, log_dir)
    return Server(name, address, process, log, cpu)


def user_service(address: str, data: Path, cpu: int | None, env: Mapping[str, str], log_dir: Path) -> Server:
    args = ["-m", "services.users", "--listen", address, "--data", str(data), "--log-level", "WARNING"]
    return start_server("service", args, address, cpu, env, log_dir)


def yardstick(upstream: str, port: int, cpu: int | None, env: Mapping[str, str], log_dir: Path) -> Server:
    args = [str(YARDSTICK), "--upstream", upstream, "--port", str(port)]
    return start_server("yardstick", args, f"127.0.0.1:{port}", cpu, env, log_dir)


def floor(upstream: str, port: int, cpu: int | None, env: Mapping[str, str], log_dir: Path) -> Server:
    args = ["-m", "bench.floor", "--upstream", upstream, "--port", str(port)]
    return start_server("floor", args, f"127.0.0.1:{port}", cpu, env, log_dir)


def gateway(
    name: str,
    config: Path,
    port: int,
    cpu: int | None,
    env: Mapping[str, str],
    log_dir: Path,
    extra_args: Sequence[str] = (),
) -> Server:
    """``python -m gateway`` with ``config`` on ``port``; ``extra_args`` go on its command line
    (``--engine aio``, say)."""
    address = f"127.0.0.1:{port}"
    # Default settings, as users run it: the access log is on (INFO), written to the log file.
    args = ["-m", "gateway", "--config", str(config), "--listen", address, *extra_args]
    return start_server(name, args, address, cpu, env, log_dir)
