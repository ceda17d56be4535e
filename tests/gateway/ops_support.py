"""What the operations tests share: an upstream they control, a gateway beside it, scrapes and log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families
from shop.users.v1 import users_pb2, users_pb2_grpc

from runtime.introspection import add_health
from tests.support.processes import free_port, running, stderr_text

USERS = "shop.users.v1.UserService"
RECOMMENDATIONS = "shop.recommendations.v1.RecommendationService"
KEY = (("x-api-key", "secret-key"),)

# GetUser ids with a behaviour: FLAKY fails UNAVAILABLE on the first attempt of each request id;
# SLOW_BASE + N answers after N milliseconds. Any other id answers at once with the upstream's name.
FLAKY = 2
SLOW_BASE = 1000
# ListUsers segments: "N" streams N users 20 ms apart; "forever" never ends; "flaky" as FLAKY.
FOREVER = "forever"


@dataclass
class Seen:
    """What reached one upstream."""

    metadata: list[dict[str, str | bytes]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    started: int = 0
    finished: int = 0


class OpsUsers(users_pb2_grpc.UserServiceServicer):
    def __init__(self, name: str, seen: Seen) -> None:
        self.name = name
        self.seen = seen

    async def _enter(self, context: grpc.aio.ServicerContext, flaky: bool) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.seen.metadata.append(metadata)
        self.seen.started += 1
        request_id = str(metadata.get("x-request-id", ""))
        self.seen.attempts[request_id] += 1
        if flaky and self.seen.attempts[request_id] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.User:
        await self._enter(context, request.user_id == FLAKY)
        if request.user_id > SLOW_BASE:
            await asyncio.sleep((request.user_id - SLOW_BASE) / 1000)
        self.seen.finished += 1
        return users_pb2.User(user_id=request.user_id, name=self.name)

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[users_pb2.User]:
        await self._enter(context, request.segment == "flaky")
        count = 1 << 30 if request.segment == FOREVER else int(request.segment or 1)
        for number in range(1, count + 1):
            yield users_pb2.User(user_id=number, name=self.name)
            await asyncio.sleep(0.02)
        self.seen.finished += 1


@contextlib.asynccontextmanager
async def upstream(name: str, port: int = 0, seen: Seen | None = None) -> AsyncIterator[tuple[int, Seen]]:
    """A UserService named ``name`` on 127.0.0.1:``port`` (a free one for 0), served by this process.

    Upstreams given one ``seen`` count together (a retry on another one is still a retry).
    """
    seen = Seen() if seen is None else seen
    server = grpc.aio.server()
    users_pb2_grpc.add_UserServiceServicer_to_server(OpsUsers(name, seen), server)
    await add_health(server).set("", 1)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield bound, seen
    finally:
        await server.stop(None)


@dataclass(frozen=True)
class Gateway:
    address: str
    process: subprocess.Popen[str]
    metrics_port: int = 0

    def log(self) -> str:
        return stderr_text(self.process)

    def access_lines(self) -> list[dict[str, Any]]:
        return access_lines(self.log())

    def scrape(self) -> Metrics:
        return scrape(self.metrics_port)


@contextlib.contextmanager
def gateway(config: Path, *options: str, metrics: bool = False) -> Iterator[Gateway]:
    """``python -m gateway --config config`` on free loopback ports, once its health check answers."""
    port = free_port()
    metrics_port = free_port() if metrics else 0
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", *options]
    if metrics:
        args += ["--metrics-listen", str(metrics_port)]
    with running(args, port) as process:
        yield Gateway(f"127.0.0.1:{port}", process, metrics_port)


@contextlib.asynccontextmanager
async def gateway_beside(config: Path, *options: str, metrics: bool = False) -> AsyncIterator[Gateway]:
    """:func:`gateway`, started from a thread: this event loop stays free for the upstreams it serves."""
    with contextlib.ExitStack() as stack:
        started = await asyncio.to_thread(stack.enter_context, gateway(config, *options, metrics=metrics))
        try:
            yield started
        finally:
            await asyncio.to_thread(stack.close)


def toml(routes: str, top: str = "", tail: str = "", grace: float = 5) -> str:
    """A config: ``top`` level fields, the demo key, ``routes`` ([[routes]] tables), then ``tail``."""
    return f"""{top}
health_check_interval = 0.2
shutdown_grace = {grace}

[[api_keys]]
client = "demo"
key = "secret-key"

{routes}
{tail}
"""


def route(service: str, *addresses: str, extra: str = "") -> str:
    if len(addresses) == 1:
        where = f'upstream = "{addresses[0]}"'
    else:
        where = "upstreams = [" + ", ".join(f'"{a}"' for a in addresses) + "]"
    return f'[[routes]]\nservice = "{service}"\n{where}\n{extra}\n'


def write(folder: Path, text: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(text)
    return path


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Metrics:
    """Every sample at http://127.0.0.1:PORT/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Metrics, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def access_lines(text: str) -> list[dict[str, Any]]:
    """The access-log lines in ``text`` (a log stream of JSON lines and grpc's own plain ones)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "access":
                lines.append(entry)
    return lines


async def wait_for(predicate: Any, within: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true: log lines and metrics are written just after a call ends."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(0.02)


async def get_user(
    channel: grpc.aio.Channel,
    user_id: int,
    metadata: tuple[tuple[str, str], ...] = KEY,
    deadline: float | None = 5,
) -> tuple[grpc.StatusCode, str, dict[str, str | bytes]]:
    """GetUser: the status code, the reply's name (or the error details) and the initial metadata.

    ``deadline`` is the call's gRPC timeout in seconds (None: no deadline).
    """
    call = users_pb2_grpc.UserServiceStub(channel).GetUser(
        users_pb2.GetUserRequest(user_id=user_id), metadata=metadata, timeout=deadline
    )
    try:
        user = await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", dict(error.initial_metadata() or ())
    return grpc.StatusCode.OK, user.name, dict(await call.initial_metadata() or ())
