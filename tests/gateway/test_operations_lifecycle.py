"""Stopping the gateway: health turns NOT_SERVING, the listener closes, calls in flight finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.ops_support import (
    FOREVER,
    KEY,
    SLOW_BASE,
    USERS,
    gateway,
    gateway_beside,
    get_user,
    route,
    toml,
    upstream,
    wait_for,
    write,
)

GRACE = 2.0
SLOW_CALLS = 30
STREAMS = 4
STREAMED = 20  # messages per stream, 20 ms apart


async def _stream(users: users_pb2_grpc.UserServiceStub, segment: str) -> tuple[grpc.StatusCode, int]:
    call = users.ListUsers(users_pb2.ListUsersRequest(segment=segment), metadata=KEY, timeout=15)
    received = 0
    try:
        async for _ in call:
            received += 1
    except grpc.aio.AioRpcError as error:
        return error.code(), received
    return grpc.StatusCode.OK, received


async def test_sigterm_under_load_loses_no_call_that_started(tmp_path: Path) -> None:
    async with upstream("users-drain") as (port, seen):
        config = write(tmp_path, toml(route(USERS, f"127.0.0.1:{port}"), grace=GRACE))
        async with gateway_beside(config) as started:
            async with grpc.aio.insecure_channel(started.address) as channel:
                users = users_pb2_grpc.UserServiceStub(channel)
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=15)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

                # Slow unary calls (0.4 s each) and streams (0.4 s each) in flight, one stream that never
                # ends, and a steady flow of fast calls that keeps arriving while the gateway stops.
                slow = [
                    asyncio.create_task(get_user(channel, SLOW_BASE + 400, deadline=15))
                    for _ in range(SLOW_CALLS)
                ]
                streams = [asyncio.create_task(_stream(users, str(STREAMED))) for _ in range(STREAMS)]
                stuck = asyncio.create_task(_stream(users, FOREVER))
                await wait_for(lambda: seen.started >= SLOW_CALLS + STREAMS + 1, what="every call upstream")
                stopping = asyncio.Event()
                flows = [asyncio.create_task(_flow(channel, stopping, n)) for n in range(4)]
                await asyncio.sleep(0.1)

                signalled = time.monotonic()
                started.process.send_signal(signal.SIGTERM)
                # Load balancers watching health see NOT_SERVING first.
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
                # The listener is closed: a new connection is refused at once.
                async with grpc.aio.insecure_channel(started.address) as fresh:
                    code, _, _ = await get_user(fresh, 5, deadline=2)
                assert code == grpc.StatusCode.UNAVAILABLE

                # Every call that had started finishes, whole.
                assert [result[0] for result in await asyncio.gather(*slow)] == [
                    grpc.StatusCode.OK
                ] * SLOW_CALLS
                assert await asyncio.gather(*streams) == [(grpc.StatusCode.OK, STREAMED)] * STREAMS
                stopping.set()
                flowed = [outcome for results in await asyncio.gather(*flows) for outcome in results]
                # The endless stream is cut when the grace period ends, not before.
                code, received = await stuck
                assert code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
                assert time.monotonic() - signalled >= GRACE - 0.2
                assert received > 0

            exit_code = await asyncio.to_thread(started.process.wait, GRACE + 5)
            handled = {line["request_id"]: line["code"] for line in started.access_lines()}
            assert exit_code == 0
            assert time.monotonic() - signalled < GRACE + 2

    # Of the calls that kept arriving, each one the gateway started was answered OK, by the upstream.
    # The others were refused and never reached the upstream: UNAVAILABLE once the listener was closed
    # (a client may retry those elsewhere), or CANCELLED by grpc when one arrived in the instant the
    # server stopped taking calls, before the gateway could see it.
    reached = {str(metadata.get("x-request-id")) for metadata in seen.metadata}
    assert flowed, "the flow of calls never ran"
    for request_id, code in flowed:
        if request_id in handled:
            assert (code, handled[request_id], request_id in reached) == (grpc.StatusCode.OK, "OK", True)
        else:
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (request_id, code)
            assert request_id not in reached
    assert any(code == grpc.StatusCode.OK for _, code in flowed)
    assert any(code != grpc.StatusCode.OK for _, code in flowed)


async def _flow(
    channel: grpc.aio.Channel, stopping: asyncio.Event, number: int
) -> list[tuple[str, grpc.StatusCode]]:
    """Fast calls one after another until told to stop; each call's request id and status."""
    outcomes = []
    count = 0
    while not stopping.is_set() and count < 2000:
        count += 1
        request_id = f"flow-{number}-{count}"
        code, _, _ = await get_user(channel, 5, metadata=(*KEY, ("x-request-id", request_id)), deadline=5)
        outcomes.append((request_id, code))
        if code != grpc.StatusCode.OK:
            await asyncio.sleep(0.05)
    return outcomes


def test_sigint_stops_an_idle_gateway_at_once(tmp_path: Path) -> None:
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1"), grace=10))
    with gateway(config) as started:
        signalled = time.monotonic()
        started.process.send_signal(signal.SIGINT)
        assert started.process.wait(5) == 0
        assert time.monotonic() - signalled < 2  # nothing in flight: no need to wait out the grace
        assert '"message": "stopped"' in started.log()
