"""Calls the client cancels: the service carries on, and logs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.services.conftest import USERS, Server, start
from tests.services.logs import log_entries, wait_for_entry

if TYPE_CHECKING:
    from shop.recommendations.v1.recommendations_pb2_grpc import RecommendationServiceAsyncStub


@pytest.fixture(scope="module")
def crowded_user_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A user service whose ListUsers streams ~8 MB: far more than flow control lets through
    before the client reads, so a cancellation always finds the server in the middle of the stream.
    """
    path = tmp_path_factory.mktemp("crowded") / "users.json"
    users = [{"user_id": i, "name": f"Shopper {i} " + "x" * 4000, "segment": "crowd"} for i in range(1, 2001)]
    path.write_text(json.dumps({"users": users, "recommendations": {}}))
    with start(USERS, "--data", str(path)) as server:
        yield server


async def test_cancelled_server_stream(crowded_user_service: Server) -> None:
    before = len(log_entries(crowded_user_service.proc))
    async with grpc.aio.insecure_channel(crowded_user_service.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        call = users.ListUsers(users_pb2.ListUsersRequest(), timeout=10)
        first = await call.read()
        assert first.user_id == 1
        assert call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED

        await wait_for_entry(
            crowded_user_service.proc,
            after=before,
            method="/shop.users.v1.UserService/ListUsers",
            code="CANCELLED",
        )
        reply = await users.GetUser(users_pb2.GetUserRequest(user_id=2000), timeout=5)
        assert reply.name.startswith("Shopper 2000 ")
    assert crowded_user_service.proc.poll() is None


async def test_cancelled_bidi_stream(
    recommendation_service: Server, recommendations: RecommendationServiceAsyncStub
) -> None:
    before = len(log_entries(recommendation_service.proc))
    ask = recommendations_pb2.GetRecommendationsRequest
    call = recommendations.StreamRecommendations(timeout=10)
    await call.write(ask(user_id=101))
    assert (await call.read()).user_id == 101
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED

    entry = await wait_for_entry(
        recommendation_service.proc,
        after=before,
        method="/shop.recommendations.v1.RecommendationService/StreamRecommendations",
    )
    # grpc.aio ends the request stream of a server waiting to read as if the client had finished
    # sending, so the handler returns normally and may well be logged as OK (a grpc.aio limitation).
    assert entry["code"] in {"CANCELLED", "OK"}
    reply = await recommendations.GetRecommendations(ask(user_id=104), timeout=5)
    assert list(reply.recommendations) == ["Jackets", "Bracelet", "Shorts"]
    assert recommendation_service.proc.poll() is None
