"""The upstreams every test of the native engine's server forwards to, started once for the package."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.native.support import Attempts, Gateway, Record, Upstreams, echo_upstream, started
from tests.support.processes import free_port, running


@pytest.fixture(scope="package")
def upstreams() -> Iterator[Upstreams]:
    seen: queue.Queue[Record] = queue.Queue()
    attempts = Attempts()
    users_port, recommendations_port = free_port(), free_port()
    with ExitStack() as stack:
        ports = []
        for name in ("a", "b"):
            server = echo_upstream(seen, name, attempts)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            server.start()
            stack.callback(server.stop, None)
        stack.enter_context(
            running(["-m", "services.users", "--listen", f"127.0.0.1:{users_port}"], users_port)
        )
        stack.enter_context(
            running(
                ["-m", "services.recommendations", "--listen", f"127.0.0.1:{recommendations_port}"],
                recommendations_port,
            )
        )
        yield Upstreams(users_port, recommendations_port, ports[0], ports[1], seen, attempts)


@pytest.fixture
def gateway(upstreams: Upstreams) -> Iterator[Gateway]:
    with started(upstreams) as gateway:
        yield gateway
