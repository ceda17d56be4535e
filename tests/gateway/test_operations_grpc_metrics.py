"""The go-grpc-prometheus metrics (grpc_server_*, grpc_client_*), as a dashboard reads them."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from gateway.ops.grpc_metrics import GRPC_CODES
from tests.gateway.configs import API_KEY, RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.ops_support import Metrics, scrape, value
from tests.support.processes import free_port, running

KEY = (("x-api-key", API_KEY),)
# grpc_code's values as go-grpc-prometheus writes them (Go's codes.Code.String()).
GO_CODES = frozenset(
    {
        "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
        "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
        "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    }
)  # fmt: skip
# The codes alert rules written for go-grpc-prometheus count as failures (grpc_code=~"...").
ALERT_CODES = "Unknown|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"
# Two calls per user a minute to GetUser: the third for one user is refused.
RULE = f"""
[[rate_limit.rules]]
name = "per-user"
rate = "2/minute"
key = "field:user_id"
scope = ["/{USERS}/GetUser"]

[http]
"""


@dataclass(frozen=True)
class Doors:
    grpc: str
    http: str
    metrics: int


@contextlib.contextmanager
def gateway_with_metrics(config: Path) -> Iterator[Doors]:
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    args += ["--http-listen", f"127.0.0.1:{http_port}", "--metrics-listen", str(metrics_port)]
    with running(args, port):
        yield Doors(f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", metrics_port)


@pytest.fixture
def doors(services: Services, tmp_path: Path) -> Iterator[Doors]:
    with gateway_with_metrics(write_config(tmp_path, gateway_toml(services.routes, rules=RULE))) as started:
        yield started


def _series(samples: Metrics, name: str, kind: str, service: str, method: str, **more: str) -> float:
    return value(samples, name, grpc_type=kind, grpc_service=service, grpc_method=method, **more)


async def _scripted_mix(doors: Doors) -> None:
    """OK, NOT_FOUND, a limit refusal, an auth refusal and an unrouted call; a stream of each kind."""
    async with grpc.aio.insecure_channel(doors.grpc) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        recommendations = recommendations_pb2_grpc.RecommendationServiceStub(channel)

        async def code_of(call: object) -> grpc.StatusCode:
            try:
                await call  # type: ignore[misc]
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        for user_id in (101, 101, 101, 999):
            await code_of(users.GetUser(users_pb2.GetUserRequest(user_id=user_id), metadata=KEY))
        assert await code_of(users.GetUser(users_pb2.GetUserRequest(user_id=102))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        assert await code_of(unrouted(b"", metadata=KEY)) == grpc.StatusCode.UNIMPLEMENTED
        listed = [
            u async for u in users.ListUsers(users_pb2.ListUsersRequest(segment="premium"), metadata=KEY)
        ]
        assert [u.user_id for u in listed] == [101, 103]
        group = [recommendations_pb2.GetRecommendationsRequest(user_id=n) for n in (101, 102, 103)]
        await recommendations.RecommendForGroup(iter(group), metadata=KEY)
        pair = [recommendations_pb2.GetRecommendationsRequest(user_id=n) for n in (103, 104)]
        streamed = [r async for r in recommendations.StreamRecommendations(iter(pair), metadata=KEY)]
        assert len(streamed) == 2
    async with httpx.AsyncClient(base_url=doors.http, timeout=10) as web:
        assert (await web.get("/v1/users/102", headers={"x-api-key": API_KEY})).status_code == 200


async def test_server_and_client_series_count_a_scripted_mix(doors: Doors) -> None:
    before = scrape(doors.metrics)
    await _scripted_mix(doors)
    after = scrape(doors.metrics)

    def delta(name: str, kind: str, service: str, method: str, **more: str) -> float:
        return _series(after, name, kind, service, method, **more) - _series(
            before, name, kind, service, method, **more
        )

    handled, get = "grpc_server_handled_total", ("unary", USERS, "GetUser")
    # 101 twice OK, then refused; 999 NOT_FOUND; 102 without a key; 102 over HTTP.
    assert delta("grpc_server_started_total", *get) == 6
    assert delta(handled, *get, grpc_code="OK") == 3
    assert delta(handled, *get, grpc_code="NotFound") == 1
    assert delta(handled, *get, grpc_code="ResourceExhausted") == 1
    assert delta(handled, *get, grpc_code="Unauthenticated") == 1
    assert delta("grpc_server_msg_received_total", *get) == 6
    assert delta("grpc_server_msg_sent_total", *get) == 3
    assert delta("grpc_server_handling_seconds_count", *get) == 6
    # Only the calls that went upstream are client calls: OK three times, NOT_FOUND once.
    assert delta("grpc_client_started_total", *get) == 4
    assert delta("grpc_client_handled_total", *get, grpc_code="OK") == 3
    assert delta("grpc_client_handled_total", *get, grpc_code="NotFound") == 1
    assert delta("grpc_client_handled_total", *get, grpc_code="ResourceExhausted") == 0
    assert delta("grpc_client_msg_sent_total", *get) == 4
    assert delta("grpc_client_msg_received_total", *get) == 3
    assert delta("grpc_client_handling_seconds_count", *get) == 4

    listing = ("server_stream", USERS, "ListUsers")
    assert delta(handled, *listing, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", *listing) == 1
    assert delta("grpc_server_msg_sent_total", *listing) == 2
    assert delta("grpc_client_msg_received_total", *listing) == 2
    group = ("client_stream", RECOMMENDATIONS, "RecommendForGroup")
    assert delta(handled, *group, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", *group) == 3
    assert delta("grpc_server_msg_sent_total", *group) == 1
    assert delta("grpc_client_msg_sent_total", *group) == 3
    bidi = ("bidi_stream", RECOMMENDATIONS, "StreamRecommendations")
    assert delta(handled, *bidi, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", *bidi) == 2
    assert delta("grpc_server_msg_sent_total", *bidi) == 2

    unknown = ("unknown", "unknown", "unknown")
    assert delta(handled, *unknown, grpc_code="Unimplemented") == 1
    assert delta("grpc_client_started_total", *unknown) == 0
    # The gateway's own series still split the calls by door.
    calls = {"service": USERS, "method": "GetUser", "code": "OK"}
    assert value(after, "grpc_gateway_calls_total", **calls, door="grpc") == 2
    assert value(after, "grpc_gateway_calls_total", **calls, door="http") == 1


async def test_made_up_method_names_make_no_series(doors: Doors) -> None:
    async def made_up(channel: grpc.aio.Channel, number: int) -> grpc.StatusCode:
        call = channel.unary_unary(f"/made.up.v{number}.Service/Method{number}")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"", metadata=KEY, timeout=10)
        return refused.value.code()

    async with grpc.aio.insecure_channel(doors.grpc) as channel:
        for first in range(0, 10_000, 50):  # 50 at a time
            codes = await asyncio.gather(*(made_up(channel, n) for n in range(first, first + 50)))
            assert set(codes) == {grpc.StatusCode.UNIMPLEMENTED}
    samples = scrape(doors.metrics)
    named = {name for name, labels in samples if name.startswith(("grpc_server_", "grpc_client_"))}
    methods = {
        dict(labels).get("grpc_method")
        for name, labels in samples
        if name in named and "grpc_method" in dict(labels)
    }
    assert "unknown" in methods
    assert not any(method.startswith("Method") for method in methods if method)
    assert _series(
        samples, "grpc_server_handled_total", "unknown", "unknown", "unknown", grpc_code="Unimplemented"
    ) == (10_000)
    # Every series is of a method the gateway answers, or the one unknown series.
    assert len(methods) < 30


async def test_grpc_code_is_spelt_as_go_grpc_prometheus_spells_it(doors: Doors) -> None:
    """What a dashboard or an alert rule written for go-grpc-prometheus selects, the gateway exports."""
    async with grpc.aio.insecure_channel(doors.grpc) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        codes = []
        for _ in range(3):  # the third is over the rule's two a minute
            try:
                await users.GetUser(users_pb2.GetUserRequest(user_id=104), metadata=KEY, timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
        assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
    samples = scrape(doors.metrics)
    get = ("unary", USERS, "GetUser")
    assert _series(samples, "grpc_server_handled_total", *get, grpc_code="ResourceExhausted") == 1
    assert _series(samples, "grpc_server_handled_total", *get, grpc_code="RESOURCE_EXHAUSTED") == 0
    # grpc_code=~"Unknown|ResourceExhausted|...": PromQL anchors the regex at both ends. Only the
    # user service's series: the start-up's health probe gives up after 0.25 s, and on a loaded
    # machine the gateway rightly counts such a probe as DeadlineExceeded.
    alerting = {
        labels
        for name, labels in samples
        if name == "grpc_server_handled_total"
        and dict(labels)["grpc_service"] == USERS
        and re.fullmatch(ALERT_CODES, dict(labels)["grpc_code"])
    }
    assert {dict(labels)["grpc_code"] for labels in alerting} == {"ResourceExhausted"}
    assert sum(samples[("grpc_server_handled_total", labels)] for labels in alerting) == 1
    spelt = {dict(labels)["grpc_code"] for name, labels in samples if "grpc_code" in dict(labels)}
    assert spelt >= {"OK", "ResourceExhausted"}
    assert spelt <= GO_CODES


def test_every_status_code_has_its_go_name() -> None:
    assert set(GRPC_CODES) == set(grpc.StatusCode)
    assert set(GRPC_CODES.values()) == GO_CODES
    assert GRPC_CODES[grpc.StatusCode.CANCELLED] == "Canceled"  # Go's spelling, one L
