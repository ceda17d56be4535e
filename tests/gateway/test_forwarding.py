"""Forwarding through the gateway: every RPC kind, metadata both ways, deadlines, cancellation,
errors passed through untouched, and an upstream that goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from shop.recommendations.v1 import recommendations_pb2 as rec_pb2
from shop.recommendations.v1 import recommendations_pb2_grpc as rec_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.conftest import Services, start_gateway
from tests.gateway.upstream_double import ECHO, FAIL_WITH_DETAILS, SLOW, Recorder, start_upstream
from tests.support.processes import free_port

KEY = (("x-api-key", "secret-key"),)
NO_RULES = ""


@pytest.fixture
def open_gateway(services: object, tmp_path: Path) -> Iterator[str]:
    """The reference routes without rate limits, so tests can call freely."""
    from tests.gateway.conftest import Services

    assert isinstance(services, Services)
    with start_gateway(write_config(tmp_path, gateway_toml(services.routes, rules=NO_RULES))) as address:
        yield address


async def test_every_rpc_kind(open_gateway: str) -> None:
    async with grpc.aio.insecure_channel(open_gateway) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        recommendations = rec_grpc.RecommendationServiceStub(channel)

        user = await users.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5)
        assert (user.name, user.segment) == ("Atul", "premium")

        premium = [
            u.name async for u in users.ListUsers(users_pb2.ListUsersRequest(segment="premium"), metadata=KEY)
        ]
        assert premium == ["Atul", "Aman"]

        async def group() -> AsyncIterator[rec_pb2.GetRecommendationsRequest]:
            for user_id in (101, 103):
                yield rec_pb2.GetRecommendationsRequest(user_id=user_id)

        merged = await recommendations.RecommendForGroup(group(), metadata=KEY, timeout=5)
        assert list(merged.recommendations) == ["shirt", "jeans", "watch", "T-shirt", "shoes"]

        stream = recommendations.StreamRecommendations(metadata=KEY, timeout=5)
        await stream.write(rec_pb2.GetRecommendationsRequest(user_id=102))
        first = await stream.read()
        await stream.write(rec_pb2.GetRecommendationsRequest(user_id=104))
        second = await stream.read()
        await stream.done_writing()
        assert list(first.recommendations) == ["dress", "shoes", "handbag"]
        assert list(second.recommendations) == ["Jackets", "Bracelet", "Shorts"]
        assert await stream.code() == grpc.StatusCode.OK


async def test_upstream_errors_pass_through(open_gateway: str) -> None:
    async with grpc.aio.insecure_channel(open_gateway) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(users_pb2.GetUserRequest(user_id=999), metadata=KEY, timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "user 999 not found"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(users_pb2.GetUserRequest(user_id=0), metadata=KEY, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def controlled(tmp_path: Path) -> AsyncIterator[tuple[str, Recorder]]:
    """A gateway in front of an upstream the test controls (see upstream_double)."""
    recorder = Recorder()
    server, port = await start_upstream(recorder)
    config = write_config(tmp_path, gateway_toml({USERS: f"127.0.0.1:{port}"}, rules=NO_RULES))
    try:
        with start_gateway(config) as address:
            yield address, recorder
    finally:
        await server.stop(None)


async def test_metadata_both_ways(controlled: tuple[str, Recorder]) -> None:
    address, recorder = controlled
    sent = (*KEY, ("x-client-id", "forged"), ("x-tenant", "acme"), ("x-blob-bin", b"\xff\x00"))
    async with grpc.aio.insecure_channel(address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=ECHO), metadata=sent, timeout=5
        )
        assert (await call).name == "echo"
        initial = dict(await call.initial_metadata())
        trailing = dict(await call.trailing_metadata())
    received = recorder.metadata[-1]
    assert received["x-tenant"] == "acme"
    assert received["x-blob-bin"] == b"\xff\x00"
    assert received["x-client-id"] == "demo"  # the verified name, not the forged one
    assert "x-api-key" not in received
    assert initial["x-upstream-header"] == "hello"
    assert trailing["x-upstream-trailer"] == "bye"
    assert trailing["x-trace-bin"] == b"\x00\x01"


async def test_rich_error_details_pass_through(controlled: tuple[str, Recorder]) -> None:
    address, _ = controlled
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=FAIL_WITH_DETAILS), metadata=KEY, timeout=5
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "user 2 is locked"
    assert dict(error.trailing_metadata())["x-why"] == "locked"
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("USER_LOCKED", "users.shop")


async def test_caller_deadline_bounds_upstream_call(controlled: tuple[str, Recorder]) -> None:
    address, recorder = controlled
    async with grpc.aio.insecure_channel(address) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=SLOW), metadata=KEY, timeout=0.2
            )
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.15 <= elapsed < 0.6
    # The upstream handler saw its call end long before its 5 s sleep would have.
    await asyncio.wait_for(recorder.cancelled.wait(), timeout=1.0)


async def test_cancelled_stream_cancels_upstream(controlled: tuple[str, Recorder]) -> None:
    address, recorder = controlled
    async with grpc.aio.insecure_channel(address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).ListUsers(users_pb2.ListUsersRequest(), metadata=KEY)
        received = [await call.read() for _ in range(3)]
        assert [u.user_id for u in received] == [1, 2, 3]
        call.cancel()
        await asyncio.wait_for(recorder.cancelled.wait(), timeout=2.0)


async def test_upstream_down_then_back(tmp_path: Path) -> None:
    recorder = Recorder()
    port = free_port()
    config = write_config(tmp_path, gateway_toml({USERS: f"127.0.0.1:{port}"}, rules=NO_RULES))
    with start_gateway(config) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = users_pb2_grpc.UserServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetUser(users_pb2.GetUserRequest(user_id=ECHO), metadata=KEY, timeout=5)
            assert time.monotonic() - started < 2.0
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details().startswith(f"upstream 127.0.0.1:{port} for {USERS} is unavailable")

            server, _ = await start_upstream(recorder, port)
            try:
                # grpc reconnects with backoff; the gateway needs no restart.
                deadline = time.monotonic() + 10
                while True:
                    try:
                        user = await stub.GetUser(
                            users_pb2.GetUserRequest(user_id=ECHO), metadata=KEY, timeout=2
                        )
                        break
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() < deadline, "the gateway did not reconnect within 10 s"
                        await asyncio.sleep(0.1)
                assert user.name == "echo"
            finally:
                await server.stop(None)


def _statuses_of_early_ends(address: str, calls: int) -> dict[str, set[tuple[str, str]]]:
    """Bidi and client-streaming calls whose first request the upstream refuses, sent as a blocking
    client sends them (grpc.aio's own client has a race of its own here: grpc issue 36066)."""
    requests = [rec_pb2.GetRecommendationsRequest(user_id=user) for user in (999, 101, 102, 103, 104, 101)]
    seen: dict[str, set[tuple[str, str]]] = {"bidi": set(), "client streaming": set()}
    with grpc.insecure_channel(address) as channel:
        stub = rec_grpc.RecommendationServiceStub(channel)
        for _ in range(calls):
            for kind, method in (
                ("bidi", lambda: list(stub.StreamRecommendations(iter(requests), metadata=KEY, timeout=5))),
                ("client streaming", lambda: stub.RecommendForGroup(iter(requests), metadata=KEY, timeout=5)),
            ):
                try:
                    method()
                    seen[kind].add(("OK", ""))
                except grpc.RpcError as error:
                    seen[kind].add((error.code().name, error.details()))
    return seen


async def test_an_upstream_ending_a_client_stream_early_keeps_its_status(
    services: Services, tmp_path: Path
) -> None:
    # Through the aio engine, grpc.aio's upstream client turned about half of these into INTERNAL.
    config = write_config(tmp_path, gateway_toml(services.routes, rules=NO_RULES))
    with start_gateway(config) as address:
        seen = await asyncio.to_thread(_statuses_of_early_ends, address, 60)
    refused = {("NOT_FOUND", "no recommendations for user 999")}
    assert seen == {"bidi": refused, "client streaming": refused}
