"""Rate-limit rules as configured: keys, scopes, several rules, strategies, windows, streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2 as rec_pb2
from shop.recommendations.v1 import recommendations_pb2_grpc as rec_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services, start_gateway

KEY = (("x-api-key", "secret-key"),)
OK, REFUSED = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
Metadata = tuple[tuple[str, str], ...]


def rule(rate: str, key: str, strategy: str = "moving-window", name: str = "", scope: str = "") -> str:
    lines = ["[[rate_limit.rules]]", f'rate = "{rate}"', f'key = "{key}"', f'strategy = "{strategy}"']
    if name:
        lines.append(f'name = "{name}"')
    if scope:
        lines.append(f"scope = {scope}")
    return "\n" + "\n".join(lines) + "\n"


@contextlib.contextmanager
def gateway_with(services: Services, folder: Path, rules: str) -> Iterator[str]:
    with start_gateway(write_config(folder, gateway_toml(services.routes, rules=rules))) as address:
        yield address


async def get_user(channel: grpc.aio.Channel, user_id: int, extra: Metadata = ()) -> grpc.StatusCode:
    """The status of one GetUser call."""
    try:
        await users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), metadata=(*KEY, *extra), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


async def refusal(channel: grpc.aio.Channel, user_id: int, extra: Metadata = ()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), metadata=(*KEY, *extra), timeout=5
        )
    assert caught.value.code() == REFUSED
    return caught.value


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter", "fixed-window"])
async def test_each_strategy_counts_per_client(services: Services, tmp_path: Path, strategy: str) -> None:
    with gateway_with(services, tmp_path, rule("3/30 seconds", "client", strategy)) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, u) for u in (101, 102, 103)] == [OK, OK, OK]
            error = await refusal(channel, 104)
    assert error.details().startswith("rate limit exceeded for client demo: 3 per 30 seconds, retry in ")


async def test_metadata_key_with_fallback_to_client(services: Services, tmp_path: Path) -> None:
    with gateway_with(services, tmp_path, rule("2/30 seconds", "metadata:x-tenant")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            acme, globex = (("x-tenant", "acme"),), (("x-tenant", "globex"),)
            assert [await get_user(channel, 101, acme) for _ in range(3)] == [OK, OK, REFUSED]
            assert [await get_user(channel, 101, globex) for _ in range(2)] == [OK, OK]
            # No x-tenant header: the budget is the client's own.
            assert [await get_user(channel, 101) for _ in range(2)] == [OK, OK]
            error = await refusal(channel, 101)
    assert "for client demo" in error.details()


async def test_peer_key(services: Services, tmp_path: Path) -> None:
    with gateway_with(services, tmp_path, rule("2/30 seconds", "peer")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, 101) for _ in range(2)] == [OK, OK]
        # A new connection from the same host shares the budget: peers are hosts, not ports.
        async with grpc.aio.insecure_channel(address) as channel:
            error = await refusal(channel, 102)
    assert "rate limit exceeded for peer 127.0.0.1: 2 per 30 seconds" in error.details()


async def test_scoped_rule_leaves_other_services_alone(services: Services, tmp_path: Path) -> None:
    rules = rule("1/30 seconds", "client", scope=f'["{RECOMMENDATIONS}"]')
    with gateway_with(services, tmp_path, rules) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, 101) for _ in range(4)] == [OK] * 4
            stub = rec_grpc.RecommendationServiceStub(channel)
            request = rec_pb2.GetRecommendationsRequest(user_id=101)
            await stub.GetRecommendations(request, metadata=KEY, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetRecommendations(request, metadata=KEY, timeout=5)
    assert caught.value.code() == REFUSED


async def test_method_scope(services: Services, tmp_path: Path) -> None:
    rules = rule("1/30 seconds", "client", scope=f'["/{USERS}/ListUsers"]')
    with gateway_with(services, tmp_path, rules) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, 101) for _ in range(3)] == [OK] * 3


async def test_several_rules_report_the_smallest_remaining_and_the_refusing_rule(
    services: Services, tmp_path: Path
) -> None:
    rules = rule("5/30 seconds", "field:user_id", name="per-user") + rule(
        "3/30 seconds", "client", name="per-client"
    )
    with gateway_with(services, tmp_path, rules) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            call = stub.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5)
            await call
            headers = dict(await call.initial_metadata())
            assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("3", "2")
            assert [await get_user(channel, u) for u in (102, 103)] == [OK, OK]
            error = await refusal(channel, 104)
    assert error.details().startswith("rate limit exceeded for client demo: 3 per 30 seconds")
    assert dict(error.trailing_metadata())["x-ratelimit-limit"] == "3"


async def test_budget_returns_when_the_window_moves_on(services: Services, tmp_path: Path) -> None:
    with gateway_with(services, tmp_path, rule("2/1 second", "field:user_id")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, 101) for _ in range(3)] == [OK, OK, REFUSED]
            error = await refusal(channel, 101)
            assert dict(error.trailing_metadata())["retry-after"] == "1"
            await asyncio.sleep(1.1)
            assert await get_user(channel, 101) == OK


async def test_field_missing_from_method_falls_back_to_client(services: Services, tmp_path: Path) -> None:
    with gateway_with(services, tmp_path, rule("2/30 seconds", "field:user_id")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            for _ in range(2):
                users = [u async for u in stub.ListUsers(users_pb2.ListUsersRequest(), metadata=KEY)]
                assert len(users) == 4
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.ListUsers(users_pb2.ListUsersRequest(), metadata=KEY):
                    pass
    assert caught.value.code() == REFUSED
    assert "for client demo" in caught.value.details()


async def test_streaming_call_costs_one_unit_keyed_by_its_first_message(
    services: Services, tmp_path: Path
) -> None:
    with gateway_with(services, tmp_path, rule("2/30 seconds", "field:user_id")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = rec_grpc.RecommendationServiceStub(channel)

            async def group() -> AsyncIterator[rec_pb2.GetRecommendationsRequest]:
                for user_id in (101, 102, 103):
                    yield rec_pb2.GetRecommendationsRequest(user_id=user_id)

            merged = await stub.RecommendForGroup(group(), metadata=KEY, timeout=5)
            assert list(merged.user_ids) == [101, 102, 103]

            stream = stub.StreamRecommendations(metadata=KEY, timeout=5)
            for user_id in (101, 102, 103, 104):
                await stream.write(rec_pb2.GetRecommendationsRequest(user_id=user_id))
                assert (await stream.read()).user_id == user_id
            await stream.done_writing()
            assert await stream.code() == OK

            # Both streams were counted once, against user 101 (their first message).
            assert await get_user(channel, 102) == OK
            assert await get_user(channel, 101) == REFUSED


async def test_undecodable_request_is_invalid_argument(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = channel.unary_unary(f"/{USERS}/GetUser")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff", metadata=KEY, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the request is not a valid shop.users.v1.GetUserRequest message"


async def test_exact_under_concurrency(services: Services, tmp_path: Path) -> None:
    with gateway_with(services, tmp_path, rule("50/30 seconds", "field:user_id")) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            codes = await asyncio.gather(*(get_user(channel, 103) for _ in range(200)))
    assert codes.count(OK) == 50
    assert codes.count(REFUSED) == 150


async def test_client_override_gives_a_premium_key_its_own_rate(services: Services, tmp_path: Path) -> None:
    rules = (
        rule("2/30 seconds", "client", name="per-client")
        + 'overrides = { premium = "4/30 seconds" }\n'
        + '\n[[api_keys]]\nclient = "premium"\nkey = "premium-key"\n'
    )
    with gateway_with(services, tmp_path, rules) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            premium = (("x-api-key", "premium-key"),)
            stub = users_pb2_grpc.UserServiceStub(channel)
            premium_codes = []
            for _ in range(5):
                try:
                    await stub.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=premium, timeout=5)
                    premium_codes.append(OK)
                except grpc.aio.AioRpcError as error:
                    premium_codes.append(error.code())
                    assert error.details().startswith(
                        "rate limit exceeded for client premium: 4 per 30 seconds"
                    )
                    assert dict(error.trailing_metadata())["x-ratelimit-limit"] == "4"
            assert premium_codes == [OK] * 4 + [REFUSED]
            assert [await get_user(channel, 101) for _ in range(3)] == [OK, OK, REFUSED]
