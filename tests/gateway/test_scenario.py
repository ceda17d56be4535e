"""The original notebook's scenario, through the gateway, with the generated Python stubs."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from shop.recommendations.v1 import recommendations_pb2 as rec_pb2
from shop.recommendations.v1 import recommendations_pb2_grpc as rec_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import API_KEY

KEY = (("x-api-key", API_KEY),)


async def get_user(channel: grpc.aio.Channel, user_id: int) -> users_pb2.User:
    user: users_pb2.User = await users_pb2_grpc.UserServiceStub(channel).GetUser(
        users_pb2.GetUserRequest(user_id=user_id), metadata=KEY, timeout=5
    )
    return user


async def get_recommendations(channel: grpc.aio.Channel, user_id: int) -> rec_pb2.Recommendations:
    reply: rec_pb2.Recommendations = await rec_grpc.RecommendationServiceStub(channel).GetRecommendations(
        rec_pb2.GetRecommendationsRequest(user_id=user_id), metadata=KEY, timeout=5
    )
    return reply


async def test_wrong_key_is_unauthenticated(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(
                users_pb2.GetUserRequest(user_id=101), metadata=(("x-api-key", "secret-key_1"),), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "invalid API key"


async def test_missing_key_is_unauthenticated(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(users_pb2.GetUserRequest(user_id=101), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "missing x-api-key metadata"


async def test_notebook_scenario(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        sean = await get_user(channel, 104)
        assert (sean.user_id, sean.name, sean.segment) == (104, "Sean", "ultra luxury")

        aman = await get_recommendations(channel, 103)
        assert list(aman.recommendations) == ["T-shirt", "jeans", "shoes"]

        # 103 spent one unit on recommendations: one budget per user across both services.
        for _ in range(4):
            assert (await get_user(channel, 103)).name == "Aman"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_user(channel, 103)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details().startswith(
            "rate limit exceeded for user_id 103: 5 per 30 seconds, retry in "
        )

        # Other users are untouched by 103's exhausted budget.
        assert (await get_user(channel, 101)).name == "Atul"


async def test_unrouted_service_is_unimplemented(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=KEY, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "service shop.shoppers.v1.ShopService is not routed by this gateway"


async def test_unknown_method_of_routed_service_is_unimplemented(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = channel.unary_unary("/shop.users.v1.UserService/DeleteUser")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=KEY, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == (
        "method DeleteUser is not a method of shop.users.v1.UserService (it has: GetUser, ListUsers)"
    )


async def test_five_rounds_over_all_users(gateway: str) -> None:
    """Every call after a user's fifth is refused, with retry metadata and rich details."""
    outcomes: dict[int, list[str]] = {user: [] for user in range(101, 105)}
    async with grpc.aio.insecure_channel(gateway) as channel:
        for _ in range(5):
            for user in range(101, 105):
                for call in (get_user, get_recommendations):
                    try:
                        await call(channel, user)
                        outcomes[user].append("ok")
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        trailers = dict(error.trailing_metadata())
                        retry_after = int(trailers["retry-after"])
                        assert 1 <= retry_after <= 30
                        assert trailers["x-ratelimit-limit"] == "5"
                        assert trailers["x-ratelimit-remaining"] == "0"
                        assert error.details() == (
                            f"rate limit exceeded for user_id {user}: 5 per 30 seconds, "
                            f"retry in {retry_after} s"
                        )
                        status = rpc_status.from_call(error)
                        assert status is not None
                        retry_info = error_details_pb2.RetryInfo()
                        quota = error_details_pb2.QuotaFailure()
                        assert status.details[0].Unpack(retry_info)
                        assert status.details[1].Unpack(quota)
                        assert retry_info.retry_delay.seconds == retry_after
                        assert quota.violations[0].subject == f"user_id {user}"
                        assert quota.violations[0].description == "rule per-user: 5 per 30 seconds"
                        outcomes[user].append("refused")
    assert outcomes == {user: ["ok"] * 5 + ["refused"] * 5 for user in range(101, 105)}


async def test_passing_calls_carry_rate_limit_headers(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        remaining = []
        for _ in range(3):
            call = stub.GetUser(users_pb2.GetUserRequest(user_id=102), metadata=KEY, timeout=5)
            assert (await call).name == "Anagha"
            headers = dict(await call.initial_metadata())
            assert headers["x-ratelimit-limit"] == "5"
            assert 29 <= int(headers["x-ratelimit-reset"]) <= 30
            remaining.append(headers["x-ratelimit-remaining"])
    assert remaining == ["4", "3", "2"]
