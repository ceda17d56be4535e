"""Starting a grpc.aio server on an address and stopping it gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

log = logging.getLogger(__name__)


class BindError(Exception):
    """The server could not listen on the address it was given."""


def cannot_listen(address: str) -> BindError:
    return BindError(
        f"cannot listen on {address}: the port is already in use or the host is not an address "
        "of this machine; stop the other process or choose another address"
    )


def listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``server`` to ``address`` and return the bound port (useful with port 0).

    Raises:
        BindError: the address is taken or is not an address of this machine.
    """
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise cannot_listen(address) from error
    if port == 0 and not address.endswith(":0"):
        raise BindError(f"cannot listen on {address}")
    return int(port)


def stop_signal_flag() -> threading.Event:
    """For a process without an event loop (a supervisor): an Event set on SIGTERM or SIGINT."""
    flag = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: flag.set())
    return flag


async def wait_for_stop_signal() -> None:
    """Return when the process gets SIGTERM or SIGINT."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    await signalled.wait()


# The name grpc.aio gives each call's task (grpc/_cython/_cygrpc/aio/server.pyx.pxi); its server keeps
# them in a set of its own, with no public way to wait for them.
_CALL_TASK_NAME = "rpc_task"

# How long a stopped server's call tasks get to return: they have sent their status already.
_FINISHING_SECONDS = 1.0


async def stop(server: grpc.aio.Server, grace: float | None) -> None:
    """``server.stop(grace)``, then let the tasks of calls that have just ended return.

    grpc.aio's stop returns once grpc-core has no live call, but the Python task of a call that has
    just sent its status may still be winding down. Cancelled then, as a loop that closes cancels
    every task left, grpc logs an error and a traceback for a call that ended well.
    """
    await server.stop(grace)
    finishing = [task for task in asyncio.all_tasks() if task.get_name() == _CALL_TASK_NAME]
    if finishing:
        await asyncio.wait(finishing, timeout=_FINISHING_SECONDS)


async def serve_until_signalled(
    server: grpc.aio.Server,
    grace_seconds: float,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Wait for SIGTERM or SIGINT, then stop accepting calls and let in-flight calls finish.

    Calls still running after ``grace_seconds`` are cancelled. ``before_stop`` runs first,
    e.g. to turn health checks to NOT_SERVING so that balancers stop sending new calls.
    """
    await wait_for_stop_signal()
    log.info("shutting down", extra={"grace_seconds": grace_seconds})
    if before_stop is not None:
        await before_stop()
    await stop(server, grace_seconds)
    log.info("stopped")


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop when it is installed (it makes grpc.aio cheaper), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
