"""What the Redis auth tests share: a gateway whose every printed line is kept (stdout and stderr, to
files that outlive it), its config with the password settings, and counts read from Redis itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.ops_support import Metrics, scrape
from tests.gateway.test_shared_limits import many_calls
from tests.support.processes import free_port, gateway_engine
from tests.support.redis import RedisServer

RATE = "5/30 seconds"


def auth_toml(
    services: Services,
    folder: Path,
    storage: str,
    fields: str = "",
    on_error: str = "deny",
    timeout: float = 0.05,
    name: str = "gateway.toml",
) -> Path:
    """A gateway config: ``storage`` and more ``[rate_limit]`` ``fields`` (password_env…), RATE a user."""
    rules = f"""
[rate_limit]
storage = "{storage}"
on_storage_error = "{on_error}"
storage_timeout = {timeout}
{fields}

[[rate_limit.rules]]
name = "per-user"
rate = "{RATE}"
key = "field:user_id"
"""
    return write_config(folder, gateway_toml(services.routes, rules=rules), name)


@dataclass(frozen=True)
class PrintingGateway:
    """A gateway process whose stdout and stderr go to files, read whole at any time (after it too)."""

    address: str
    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    metrics_port: int

    def printed(self) -> str:
        """Everything it printed so far, stdout then stderr."""
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def scrape(self) -> Metrics:
        return scrape(self.metrics_port)

    def stop(self) -> int:
        """SIGTERM, and its exit status once it has exited (its last lines printed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _wait_serving(process: subprocess.Popen[bytes], port: int, err: Path, within: float) -> None:
    deadline = time.monotonic() + within
    options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not serve; stderr:\n{err.read_text(errors='replace')}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.25, wait_for_ready=True)
            except grpc.RpcError:
                pass
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.02)


@contextlib.contextmanager
def printing_gateway(
    config: Path, folder: Path, name: str, env: dict[str, str] | None = None, log_level: str = "DEBUG"
) -> Iterator[PrintingGateway]:
    """``python -m gateway`` with ``env`` added to this environment, once it says SERVING; stopped
    (SIGTERM) at the end of the block unless stopped before. At DEBUG: every line it has is printed."""
    port, metrics_port = free_port(), free_port()
    out, err = folder / f"{name}.stdout", folder / f"{name}.stderr"
    args = [
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        str(metrics_port),
        "--log-level",
        log_level,
        "--engine",
        gateway_engine(),
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})}
        )
    gateway = PrintingGateway(f"127.0.0.1:{port}", process, out, err, metrics_port)
    try:
        _wait_serving(process, port, err, 20)
        yield gateway
    finally:
        gateway.stop()


PASSED = frozenset({grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND})


async def counted(address: str, user: int, calls: int = 20) -> tuple[int, int, set[grpc.StatusCode]]:
    """``calls`` concurrent calls for ``user``: how many passed, were refused, and any other status."""
    codes = await many_calls(address, user, calls)
    passed = sum(code in PASSED for code in codes)
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    return passed, refused, set(codes) - PASSED - {grpc.StatusCode.RESOURCE_EXHAUSTED}


def info(server: RedisServer, section: str) -> dict[str, str]:
    """``INFO section`` of ``server``, as name -> value."""
    text = server.command("INFO", section)
    assert isinstance(text, bytes), text
    fields = {}
    for line in text.decode().splitlines():
        name, separator, value = line.partition(":")
        if separator and not name.startswith("#"):
            fields[name] = value
    return fields
