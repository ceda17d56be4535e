"""Metrics, access log and request ids, as an operator sees them: scraped, read, and followed upstream."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.ops.accesslog import LOGGER as ACCESS_LOGGER
from gateway.ops.accesslog import AccessLog, method_part
from tests.gateway.ops_support import (
    FLAKY,
    FOREVER,
    KEY,
    RECOMMENDATIONS,
    USERS,
    Gateway,
    Seen,
    access_lines,
    gateway_beside,
    get_user,
    route,
    toml,
    upstream,
    value,
    wait_for,
    write,
)
from tests.services.logs import log_entries, wait_for_entry
from tests.support.processes import free_port, gateway_engine, running

PER_USER = """
[[rate_limit.rules]]
name = "per-user"
rate = "5/30 seconds"
key = "field:user_id"
"""
HEX_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Setup:
    gateway: Gateway
    seen: Seen  # what reached the users upstream
    users: str  # its address
    recommendations: subprocess.Popen[str]  # the recommendation service


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """Users through an upstream this test serves, recommendations through the real service; metrics on."""
    port = free_port()
    args = ["-m", "services.recommendations", "--listen", f"127.0.0.1:{port}"]
    with running(args, port) as recommendations:
        async with upstream("users-a") as (users_port, seen):
            routes = route(USERS, f"127.0.0.1:{users_port}") + route(RECOMMENDATIONS, f"127.0.0.1:{port}")
            config = write(tmp_path, toml(routes, tail=PER_USER))
            async with gateway_beside(config, metrics=True) as started:
                yield Setup(started, seen, f"127.0.0.1:{users_port}", recommendations)


async def test_metrics_count_known_traffic(setup: Setup) -> None:
    gateway = setup.gateway
    before = gateway.scrape()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        codes = [(await get_user(channel, 1))[0] for _ in range(6)]
        assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert (await get_user(channel, FLAKY))[0] == grpc.StatusCode.UNAVAILABLE  # no retry policy here
        assert (await get_user(channel, 7, metadata=()))[0] == grpc.StatusCode.UNAUTHENTICATED
        bad_key = (("x-api-key", "not-the-key"),)
        assert (await get_user(channel, 7, metadata=bad_key))[0] == grpc.StatusCode.UNAUTHENTICATED
        users = users_pb2_grpc.UserServiceStub(channel)
        listed = [u async for u in users.ListUsers(users_pb2.ListUsersRequest(segment="3"), metadata=KEY)]
        assert len(listed) == 3
        unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unrouted(b"", metadata=KEY, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

        def delta(name: str, **labels: str) -> float:
            return value(gateway.scrape(), name, **labels) - value(before, name, **labels)

        calls = "grpc_gateway_calls_total"
        get = {"service": USERS, "method": "GetUser"}
        by_grpc = {"door": "grpc"}
        # Counted when each call has ended, which can be just after the client saw its status.
        await wait_for(
            lambda: delta(calls, **get, **by_grpc, code="UNAUTHENTICATED") == 2, what="the refusals counted"
        )
        assert delta(calls, **get, **by_grpc, code="OK") == 5
        assert delta(calls, **get, **by_grpc, code="RESOURCE_EXHAUSTED") == 1
        assert delta(calls, **get, **by_grpc, code="UNAVAILABLE") == 1
        assert delta(calls, service=USERS, method="ListUsers", code="OK", **by_grpc) == 1
        assert delta(calls, service="unrouted", method="unrouted", code="UNIMPLEMENTED", **by_grpc) == 1
        assert delta("grpc_gateway_call_duration_seconds_count", **get) == 9
        assert delta("grpc_gateway_call_duration_seconds_bucket", **get, le="+Inf") == 9
        assert delta("grpc_gateway_rate_limited_total", rule="per-user") == 1
        assert delta("grpc_gateway_auth_failures_total", reason="missing_key") == 1
        assert delta("grpc_gateway_auth_failures_total", reason="invalid_key") == 1
        assert delta("grpc_gateway_rate_limit_store_errors_total") == 0
        # Health is checked in the background: a check slowed by a busy machine is retried next interval.
        await wait_for(
            lambda: (
                value(gateway.scrape(), "grpc_gateway_upstream_healthy", service=USERS, upstream=setup.users)
                == 1
            ),
            what="the users upstream reported healthy",
        )
        assert value(gateway.scrape(), "process_cpu_seconds_total") > 0


async def test_calls_in_flight(setup: Setup) -> None:
    gateway = setup.gateway
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        stream = users.ListUsers(users_pb2.ListUsersRequest(segment=FOREVER), metadata=KEY)
        await stream.read()
        assert value(gateway.scrape(), "grpc_gateway_calls_in_flight") == 1
        stream.cancel()
        await wait_for(
            lambda: value(gateway.scrape(), "grpc_gateway_calls_in_flight") == 0, what="in-flight back to 0"
        )
    cancelled = value(
        gateway.scrape(),
        "grpc_gateway_calls_total",
        service=USERS,
        method="ListUsers",
        code="CANCELLED",
        door="grpc",
    )
    assert cancelled == 1


async def test_access_log_line_per_call(setup: Setup) -> None:
    gateway = setup.gateway
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        sent = (*KEY, ("x-request-id", "req-abc-1"))
        code, name, headers = await get_user(channel, 11, metadata=sent)
        assert (code, name, headers["x-request-id"]) == (grpc.StatusCode.OK, "users-a", "req-abc-1")
        await get_user(channel, 12, metadata=(("x-api-key", "wrong-key"), ("x-request-id", "req-abc-2")))
        for _ in range(6):
            await get_user(channel, 13, metadata=(*KEY, ("x-request-id", "req-abc-3")))
    await wait_for(lambda: len(_lines(gateway, "req-abc-3")) == 6, what="six lines of req-abc-3")

    (ok,) = _lines(gateway, "req-abc-1")
    assert ok["client"] == "demo"
    assert ok["method"] == f"/{USERS}/GetUser"
    assert ok["code"] == "OK"
    assert ok["upstream"] == setup.users
    assert ok["rate_limit"] == "allowed"
    assert ok["peer"].startswith("ipv4:127.0.0.1:")
    assert 0 < ok["duration_ms"] < 5000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ok["time"])
    assert (ok["level"], ok["message"]) == ("info", "call")
    assert "trace_id" not in ok  # no tracing: no trace to point at (tests/gateway/test_tracing.py)
    assert "span_id" not in ok

    (refused,) = _lines(gateway, "req-abc-2")
    assert (refused["client"], refused["code"], refused["rate_limit"]) == (None, "UNAUTHENTICATED", None)

    limited = _lines(gateway, "req-abc-3")
    assert [line["rate_limit"] for line in limited] == ["allowed"] * 5 + ["refused"]
    assert limited[-1]["code"] == "RESOURCE_EXHAUSTED"
    # The client's name, never its key, in any line the gateway wrote.
    assert "secret-key" not in gateway.log()
    assert "wrong-key" not in gateway.log()


async def test_a_lines_time_and_duration_are_the_calls_own(setup: Setup) -> None:
    """The native engine observes a call's end with the next arrivals or on its tick, a while after
    it: its line still says when it ended and how long it took, within what its caller saw."""
    gateway = setup.gateway
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        await get_user(channel, 21)  # the channel is connected: the next call is the call alone
        sent = time.time()
        code, _, _ = await get_user(channel, 22, metadata=(*KEY, ("x-request-id", "req-alone")))
        answered = time.time()
    assert code == grpc.StatusCode.OK
    await wait_for(lambda: len(_lines(gateway, "req-alone")) == 1, what="the line of req-alone")
    (line,) = _lines(gateway, "req-alone")
    ended = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    # The line's time is cut to the millisecond: it may read up to 1 ms before the call was sent.
    assert sent - 0.001 <= ended <= answered
    assert 0 < line["duration_ms"] <= (answered - sent) * 1000


async def test_the_start_line_says_what_serves(setup: Setup) -> None:
    [started] = [entry for entry in log_entries(setup.gateway.process) if entry["message"] == "listening"]
    assert started["address"] == setup.gateway.address
    assert started["engine"] == gateway_engine()  # which data plane carries the calls
    assert started["tls"] == "off"
    assert started["routes"][USERS] == setup.users
    assert set(started["routes"]) == {USERS, RECOMMENDATIONS}


def _lines(gateway: Gateway, request_id: str) -> list[dict[str, Any]]:
    return [line for line in gateway.access_lines() if line["request_id"] == request_id]


async def test_request_id_is_made_up_forwarded_and_returned(setup: Setup) -> None:
    gateway = setup.gateway
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        code, _, headers = await get_user(channel, 21)
        assert code == grpc.StatusCode.OK
        made_up = headers["x-request-id"]
        assert isinstance(made_up, str)
        assert HEX_ID.fullmatch(made_up)
        assert setup.seen.metadata[-1]["x-request-id"] == made_up
        await wait_for(lambda: len(_lines(gateway, made_up)) == 1, what="the call's line")

        # Each call its own id; an unusable one (too long) is replaced.
        second = (await get_user(channel, 21))[2]["x-request-id"]
        assert second != made_up
        too_long = (await get_user(channel, 21, metadata=(*KEY, ("x-request-id", "x" * 200))))[2]
        assert HEX_ID.fullmatch(str(too_long["x-request-id"]))

        # The gateway's own refusals carry it too, in their initial metadata.
        code, _, headers = await get_user(channel, 21, metadata=(("x-request-id", "refused-1"),))
        assert (code, headers["x-request-id"]) == (grpc.StatusCode.UNAUTHENTICATED, "refused-1")
        unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        call = unrouted(b"", metadata=(*KEY, ("x-request-id", "refused-2")), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert dict(caught.value.initial_metadata())["x-request-id"] == "refused-2"


async def test_services_log_the_request_id(setup: Setup) -> None:
    process = setup.recommendations
    before = len(log_entries(process))
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
        ask = recommendations_pb2.GetRecommendationsRequest(user_id=101)
        await stub.GetRecommendations(ask, metadata=(*KEY, ("x-request-id", "trace-77")), timeout=5)
    entry = await wait_for_entry(
        process,
        after=before,
        method=f"/{RECOMMENDATIONS}/GetRecommendations",
        request_id="trace-77",
    )
    assert entry["code"] == "OK"
    await wait_for(lambda: len(_lines(setup.gateway, "trace-77")) == 1, what="the gateway's line")


async def test_access_log_to_a_file_and_store_errors(tmp_path: Path) -> None:
    """A dead Redis counts store errors (calls still pass: fail open); a dead upstream reads 0."""
    log_file = tmp_path / "access.log"
    dead = f"127.0.0.1:{free_port()}"
    async with upstream("users-b") as (users_port, _):
        routes = route(USERS, f"127.0.0.1:{users_port}") + route(RECOMMENDATIONS, dead)
        tail = f"""
[access_log]
destination = "{log_file.name}"

[rate_limit]
storage = "redis://{dead}"

[[rate_limit.rules]]
rate = "5/30 seconds"
key = "client"
"""
        async with gateway_beside(write(tmp_path, toml(routes, tail=tail)), metrics=True) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                for _ in range(3):
                    assert (await get_user(channel, 31))[0] == grpc.StatusCode.OK
            await wait_for(lambda: len(get_user_lines(log_file)) == 3, what="3 GetUser lines in the file")
            assert [line["rate_limit"] for line in get_user_lines(log_file)] == ["store_error"] * 3
            samples = gateway.scrape()
            assert value(samples, "grpc_gateway_rate_limit_store_errors_total") == 3
            healthy = value(samples, "grpc_gateway_upstream_healthy", service=RECOMMENDATIONS, upstream=dead)
            assert healthy == 0
            assert gateway.access_lines() == []  # nothing on stderr


def get_user_lines(log_file: Path) -> list[dict[str, Any]]:
    lines = access_lines(log_file.read_text())
    return [line for line in lines if line["method"] == f"/{USERS}/GetUser"]


async def test_access_log_off(tmp_path: Path) -> None:
    async with upstream("users-c") as (users_port, _):
        config = toml(route(USERS, f"127.0.0.1:{users_port}"), tail="[access_log]\nenabled = false\n")
        async with gateway_beside(write(tmp_path, config)) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                code, _, headers = await get_user(channel, 41)
            assert code == grpc.StatusCode.OK
            assert "x-request-id" in headers  # ids are still made up and returned
            await asyncio.sleep(0.2)
            assert gateway.access_lines() == []


def test_access_log_level_below_the_log_level_writes_nothing() -> None:
    # As with --log-level WARNING: the "access" logger's level decides.
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.WARNING)
    try:
        assert not AccessLog(AccessLogConfig(level="INFO")).enabled
        assert AccessLog(AccessLogConfig(level="WARNING")).enabled
    finally:
        logger.setLevel(logging.NOTSET)


def _access_log_to(path: Path) -> AccessLog:
    """An access log writing to ``path``, built as with --log-level INFO."""
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    try:
        return AccessLog(AccessLogConfig(destination=str(path)))
    finally:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)


def test_access_log_lines_are_json_whatever_the_caller_sends(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = _access_log_to(path)
    method = method_part('/a.B/"quoted"\\', None)
    log.write('id "with" \\ quotes', "ipv6:[::1]:5", "clïent", method, "OK", 0.0012345, None)
    log.close()
    (line,) = access_lines(path.read_text())
    assert line["request_id"] == 'id "with" \\ quotes'
    assert line["client"] == "clïent"
    assert line["method"] == '/a.B/"quoted"\\'
    assert (line["upstream"], line["rate_limit"], line["duration_ms"]) == (None, None, 1.234)
    assert path.read_text().isascii()


def test_access_log_trace_ids_are_lower_case_hex_of_fixed_width(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = _access_log_to(path)
    method = method_part("/a.B/C", None)
    log.write("traced", "ipv4:127.0.0.1:5", None, method, "OK", 0.001, None, (0xABC, 0x5))
    log.write("untraced", "ipv4:127.0.0.1:5", None, method, "OK", 0.001, None)
    log.close()
    traced, untraced = access_lines(path.read_text())
    # W3C trace context's form, as the collector and the upstream's logs write the same ids.
    assert (traced["trace_id"], traced["span_id"]) == ("0" * 29 + "abc", "0" * 15 + "5")
    assert "trace_id" not in untraced
    assert "span_id" not in untraced


def test_access_log_lines_come_in_the_order_their_calls_ended(tmp_path: Path) -> None:
    """An end reported late (the native engine's, taken with the next arrivals) is written in its
    place, with its own time."""
    path = tmp_path / "access.log"
    log = _access_log_to(path)
    method = method_part("/a.B/C", None)
    log.write("ended now", "ipv4:127.0.0.1:5", None, method, "OK", 0.001, None)
    log.write("ended 2 s ago", "ipv4:127.0.0.1:6", None, method, "OK", 0.001, None, ago=2.0)
    log.close()
    early, late = access_lines(path.read_text())
    assert (early["request_id"], late["request_id"]) == ("ended 2 s ago", "ended now")
    seconds = [
        datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() for line in (early, late)
    ]
    assert seconds[1] - seconds[0] == pytest.approx(2.0, abs=0.1)
