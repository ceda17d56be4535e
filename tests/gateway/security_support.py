"""What the security tests share: gateways over TLS or with a keyed health check, the CLI, a plain call."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.support.processes import free_port, running

KEY = "secret-key"


@dataclass(frozen=True)
class Started:
    address: str
    port: int
    process: subprocess.Popen[str]


@contextlib.contextmanager
def gateway_process(
    config: Path,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    health_metadata: tuple[tuple[str, str], ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Started]:
    """``python -m gateway --config config`` on a free loopback port, once its health check answers."""
    port = free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running(args, port, credentials=credentials, metadata=health_metadata, env=env) as process:
        yield Started(f"127.0.0.1:{port}", port, process)


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` to its end (a gateway that starts is stopped after 30 s)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


@dataclass(frozen=True)
class Result:
    code: grpc.StatusCode
    details: str
    initial: dict[str, str | bytes]
    trailing: dict[str, str | bytes]


async def get_user(
    address: str,
    key: str | None = KEY,
    user_id: int = 101,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    seconds: float = 5,
) -> Result:
    """One GetUser through the gateway at ``address``, on a fresh channel; the status either way."""
    headers = (*((("x-api-key", key),) if key is not None else ()), *metadata)
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        call = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), metadata=headers, timeout=seconds
        )
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return Result(
                error.code(),
                error.details() or "",
                dict(error.initial_metadata() or ()),
                dict(error.trailing_metadata() or ()),
            )
        return Result(
            grpc.StatusCode.OK,
            "",
            dict(await call.initial_metadata() or ()),
            dict(await call.trailing_metadata() or ()),
        )


@contextlib.asynccontextmanager
async def gateway_beside(config: Path, **options: Any) -> AsyncIterator[Started]:
    """:func:`gateway_process`, waited for in a thread: the event loop stays free for an upstream it runs."""
    with contextlib.ExitStack() as stack:
        started = await asyncio.to_thread(stack.enter_context, gateway_process(config, **options))
        try:
            yield started
        finally:
            await asyncio.to_thread(stack.close)


def run_main(*args: str) -> tuple[int, str]:
    """The gateway's ``main(args)`` in this process, for runs that end at the config: exit code, stderr.

    Quicker than a new interpreter; one test per module still runs the real process.
    """
    from gateway.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(args))
    finally:
        # main() sends this process's logs to stderr as JSON; give pytest its handlers back.
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, stderr.getvalue()
