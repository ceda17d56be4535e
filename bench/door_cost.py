"""What the HTTP/JSON door adds to its upstream call, in-process: ``python -m bench.door_cost``.

Starts the user service (a process of its own) and, in this process, on uvloop, drives from
``--concurrency`` callers at once: the door's ASGI app (the plan of bench/gateway.toml: auth and
the per-user rule on, the access log off) with ``GET /v1/users/101`` as uvicorn would hand it
over; and the same ``GetUser`` alone, made as the door makes it upstream (its ``UnaryCall`` on a
grpc.aio channel).
Prints CPU microseconds per call of the whole process and of the event loop's thread, medians of
interleaved rounds. No HTTP server or load generator takes part, so the difference is the door's
own work (routing, JSON both ways, the chain, observing) and its tasks, measured with far less
noise than through h2load; uvicorn's share is what ``make bench``'s HTTP path adds on top.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
from shop.users.v1 import users_pb2

from bench.servers import FAST_GRPC_EXPERIMENTS, server_environment, user_service
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.doors.http.door import HttpDoor
from gateway.doors.http.listener import door_plan
from gateway.doors.http.upstream import UnaryCall
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import Plan, load_plan

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parent / "services" / "reference_data.json"
UPSTREAM = "127.0.0.1:50151"  # bench/gateway.toml's route
METHOD = "/shop.users.v1.UserService/GetUser"
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"x-api-key", b"secret-key"),
]
SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/v1/users/101",
    "raw_path": b"/v1/users/101",
    "query_string": b"",
    "headers": HEADERS,
    "client": ("127.0.0.1", 40000),
}
# What the door sends upstream for that request, less the request id it makes up.
UPSTREAM_METADATA = (("host", "127.0.0.1:8080"), ("user-agent", "h2load nghttp2/1.52.0"))


@dataclass(frozen=True)
class Cost:
    """CPU µs per call: the whole process and the event loop's thread."""

    process: float
    loop: float


@dataclass(frozen=True)
class DoorCost:
    """Medians of the rounds."""

    door: Cost
    upstream_call: Cost

    def lines(self) -> list[str]:
        added = Cost(self.door.process - self.upstream_call.process, self.door.loop - self.upstream_call.loop)
        return [
            f"{name:<50}{cost.process:7.0f} µs CPU per call (event loop's thread {cost.loop:4.0f} µs)"
            for name, cost in (
                ("HTTP door, GET /v1/users/101, in-process", self.door),
                ("its upstream GetUser alone, as the door makes it", self.upstream_call),
                ("what the door adds", added),
            )
        ]


def _plan() -> Plan:
    def observed(config: Any) -> Observability:
        return Observability(None, None, AccessLog(AccessLogConfig(enabled=False)), None)

    return load_plan(BENCH / "gateway.toml", {}, observed)


def _door_call(door: HttpDoor) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        sent: list[dict[str, Any]] = []
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays: no disconnect
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await door(SCOPE, receive, send)
        if sent[0].get("status") != 200:
            raise RuntimeError(f"the door answered {sent}")

    return call


def _upstream_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
    request = users_pb2.GetUserRequest(user_id=101).SerializeToString()
    metadata = (("x-request-id", "0" * 32), *UPSTREAM_METADATA)

    async def call() -> None:
        answer = await UnaryCall(channel, METHOD, request, metadata, 30).answer()
        if answer.code != grpc.StatusCode.OK:
            raise RuntimeError(f"GetUser answered {answer.code}: {answer.details}")

    return call


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: grpc's pollers too
    return usage.ru_utime + usage.ru_stime


async def _round(call: Callable[[], Awaitable[None]], calls: int, concurrency: int) -> Cost:
    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    await call()
    started, started_loop = _process_cpu(), time.thread_time()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    process = _process_cpu() - started
    loop = time.thread_time() - started_loop
    done = calls // concurrency * concurrency
    return Cost(process / done * 1e6, loop / done * 1e6)


async def _measure(calls: int, concurrency: int, rounds: int) -> DoorCost:
    plan = door_plan(_plan())
    door = _door_call(HttpDoor(plan))
    async with grpc.aio.insecure_channel(UPSTREAM) as channel:
        upstream = _upstream_call(channel)
        doors, upstreams = [], []
        for _ in range(rounds):  # interleaved, medians: the machine is noisy
            doors.append(await _round(door, calls, concurrency))
            upstreams.append(await _round(upstream, calls, concurrency))
    await plan.close()
    return DoorCost(_median(doors), _median(upstreams))


def _median(costs: list[Cost]) -> Cost:
    middle = len(costs) // 2
    return Cost(sorted(c.process for c in costs)[middle], sorted(c.loop for c in costs)[middle])


def measure(calls: int = 20_000, concurrency: int = 4, rounds: int = 3) -> DoorCost:
    with tempfile.TemporaryDirectory(prefix="bench-door-") as folder:
        environment = server_environment(os.environ.get("GRPC_EXPERIMENTS", FAST_GRPC_EXPERIMENTS))
        service = user_service(UPSTREAM, DATA, None, environment, Path(folder))
        try:
            service.wait_ready()
            return uvloop.run(_measure(calls, concurrency, rounds))
        finally:
            service.stop()


def main() -> None:
    if "GRPC_EXPERIMENTS" not in os.environ:
        # grpc reads it when imported, as this module has been: set it as the gateway does, start again.
        os.environ["GRPC_EXPERIMENTS"] = FAST_GRPC_EXPERIMENTS
        os.execv(sys.executable, [sys.executable, "-m", "bench.door_cost", *sys.argv[1:]])
    parser = argparse.ArgumentParser(prog="python -m bench.door_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("\n".join(measure(args.calls, args.concurrency, args.rounds).lines()))


if __name__ == "__main__":
    main()
