"""``--workers N``: N gateway processes on one port, the kernel spreading connections (SO_REUSEPORT).

Python runs one call at a time per process; workers use every core. Each worker is a whole
gateway, so rate-limit budgets must live in a storage they share.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from types import FrameType

from gateway.config.schema import ConfigError, GatewayConfig
from runtime.addresses import parse_host_port
from runtime.serving import BindError, stop_signal_flag


def check_workers(config: GatewayConfig, count: int) -> None:
    """Refuse a worker setup that would not do what it says.

    Raises:
        ConfigError: memory storage with rules (each worker would count alone), or port 0.
    """
    if config.rate_limit.rules and not config.rate_limit.shared:
        raise ConfigError(
            f"rate_limit.storage: --workers {count} with storage = 'memory://' would give every worker a "
            f"budget of its own, letting clients through up to {count} times the configured rate; "
            "use a shared storage such as 'redis://127.0.0.1:6379', or run one worker"
        )
    if parse_host_port(config.listen)[1] == 0:
        raise ConfigError("listen: --workers needs a fixed port, not port 0")


def _port_is_free(address: str) -> bool:
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def supervise(
    count: int,
    listen: str,
    target: Callable[[list[str]], None],
    argv: list[str],
    worker_args: Sequence[list[str]] = (),
) -> int:
    """Start ``count`` processes running ``target(argv)`` and wait; SIGTERM/SIGINT stop them all gracefully.

    ``target`` must be importable by name (a module-level function): workers are spawned, not forked.
    Worker n also gets ``worker_args[n]``, when given (its own metrics port, say). If one worker
    exits, the others are stopped too, and the exit status is non-zero.
    """
    # Workers share the port with each other, so a port held by something else would go unnoticed.
    if not _port_is_free(listen):
        raise BindError(f"cannot listen on {listen}: the port is already in use")
    stopping = stop_signal_flag()
    # spawn, not fork: grpc must not be forked once initialised.
    context = multiprocessing.get_context("spawn")
    extra = list(worker_args) or [[] for _ in range(count)]
    workers = [
        context.Process(target=target, args=([*argv, *extra[n]],), name=f"gateway-worker-{n}")
        for n in range(count)
    ]
    for worker in workers:
        worker.start()

    def reload(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    while not stopping.is_set() and all(worker.is_alive() for worker in workers):
        time.sleep(0.1)
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            worker.terminate()  # SIGTERM: the worker drains its calls and exits 0
    for worker in workers:
        worker.join()
    # A worker stopped before it could install its own handler dies of our SIGTERM: that is a stop too.
    clean = all(worker.exitcode in (0, -signal.SIGTERM) for worker in workers)
    return 0 if stopping.is_set() and clean else 1
