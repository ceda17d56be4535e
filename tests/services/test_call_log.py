"""Each call leaves one JSON line on the service's stderr: method, status code, duration."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.recommendations.v1 import recommendations_pb2
from shop.users.v1 import users_pb2

from tests.services.conftest import Server
from tests.services.logs import log_entries, wait_for_entry

if TYPE_CHECKING:
    from shop.recommendations.v1.recommendations_pb2_grpc import RecommendationServiceAsyncStub
    from shop.users.v1.users_pb2_grpc import UserServiceAsyncStub


async def test_successful_call_is_logged(user_service: Server, users: UserServiceAsyncStub) -> None:
    before = len(log_entries(user_service.proc))
    await users.GetUser(users_pb2.GetUserRequest(user_id=102), timeout=5)
    entry = await wait_for_entry(
        user_service.proc, after=before, method="/shop.users.v1.UserService/GetUser", code="OK"
    )
    assert entry["logger"] == "calls"
    assert entry["level"] == "info"
    assert isinstance(entry["duration_ms"], float | int)
    assert 0 <= entry["duration_ms"] < 5000


async def test_failed_call_is_logged_with_its_code(user_service: Server, users: UserServiceAsyncStub) -> None:
    before = len(log_entries(user_service.proc))
    with pytest.raises(grpc.aio.AioRpcError):
        await users.GetUser(users_pb2.GetUserRequest(user_id=999), timeout=5)
    await wait_for_entry(
        user_service.proc, after=before, method="/shop.users.v1.UserService/GetUser", code="NOT_FOUND"
    )


async def test_streaming_calls_are_logged_when_they_end(
    recommendation_service: Server, recommendations: RecommendationServiceAsyncStub
) -> None:
    before = len(log_entries(recommendation_service.proc))
    ask = recommendations_pb2.GetRecommendationsRequest
    with pytest.raises(grpc.aio.AioRpcError):
        await recommendations.RecommendForGroup(iter([]), timeout=5)
    call = recommendations.StreamRecommendations(iter([ask(user_id=101), ask(user_id=102)]), timeout=5)
    assert len([reply async for reply in call]) == 2
    method = "/shop.recommendations.v1.RecommendationService/"
    await wait_for_entry(
        recommendation_service.proc,
        after=before,
        method=method + "RecommendForGroup",
        code="INVALID_ARGUMENT",
    )
    await wait_for_entry(
        recommendation_service.proc, after=before, method=method + "StreamRecommendations", code="OK"
    )


def test_startup_is_logged_with_the_address(user_service: Server) -> None:
    listening = [entry for entry in log_entries(user_service.proc) if entry["message"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["address"] == user_service.address


async def test_health_checks_are_logged_at_debug_only(
    user_service: Server, users: UserServiceAsyncStub
) -> None:
    before = len(log_entries(user_service.proc))
    async with grpc.aio.insecure_channel(user_service.address) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    await users.GetUser(users_pb2.GetUserRequest(user_id=101), timeout=5)
    await wait_for_entry(
        user_service.proc, after=before, method="/shop.users.v1.UserService/GetUser", code="OK"
    )
    methods = [entry.get("method") for entry in log_entries(user_service.proc)[before:]]
    assert "/grpc.health.v1.Health/Check" not in methods
