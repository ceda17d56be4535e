"""Access control: per-client allow lists, failed-auth lockout per address, health and reflection exposure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.h2wire import Reply, exchange, grpc_frame, grpc_request
from tests.gateway.security_support import KEY, Started, gateway_process, get_user
from tests.support.processes import gateway_engine

PER_CLIENT_RULE = """
[[rate_limit.rules]]
name = "per-client"
rate = "5/30 seconds"
key = "client"
"""

READER_KEY = "reader-key-19c2"
RECS_KEY = "recs-key-7e01"
ACL_KEYS = f"""
[[api_keys]]
client = "reader"
key = "{READER_KEY}"
allow = ["/{USERS}/GetUser"]

[[api_keys]]
client = "recs"
key = "{RECS_KEY}"
allow = ["{RECOMMENDATIONS}"]
"""


@pytest.fixture(scope="module")
def acl_gateway(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    text = gateway_toml(services.routes, rules=PER_CLIENT_RULE) + ACL_KEYS
    with gateway_process(write_config(tmp_path_factory.mktemp("acl"), text)) as started:
        yield started


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall):
            async for _ in call:
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _metadata(key: str) -> tuple[tuple[str, str]]:
    return (("x-api-key", key),)


async def test_a_key_may_call_only_what_its_allow_list_names(acl_gateway: Started) -> None:
    reader = _metadata(READER_KEY)
    async with grpc.aio.insecure_channel(acl_gateway.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        recommendations = recommendations_pb2_grpc.RecommendationServiceStub(channel)
        request = recommendations_pb2.GetRecommendationsRequest(user_id=101)
        refused = {
            f"/{USERS}/ListUsers": users.ListUsers(users_pb2.ListUsersRequest(), metadata=reader, timeout=5),
            f"/{RECOMMENDATIONS}/GetRecommendations": recommendations.GetRecommendations(
                request, metadata=reader, timeout=5
            ),
            f"/{RECOMMENDATIONS}/StreamRecommendations": recommendations.StreamRecommendations(
                iter(()), metadata=reader, timeout=5
            ),
            # Not routed at all: still "not allowed", which tells the caller nothing about routing.
            "/shop.orders.v1.OrderService/GetOrder": channel.unary_unary(
                "/shop.orders.v1.OrderService/GetOrder"
            )(b"", metadata=reader, timeout=5),
        }
        for method, call in refused.items():
            assert await _code(call) == (
                grpc.StatusCode.PERMISSION_DENIED,
                f"client reader may not call {method}",
            )

        # Refusals spent none of the client's budget (5 per 30 s): this call is its first.
        allowed = users.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=reader, timeout=5)
        assert (await allowed).name == "Atul"
        assert dict(await allowed.initial_metadata())["x-ratelimit-remaining"] == "4"

        # A whole service may be allowed; the gateway's own reflection stays open to every key.
        recs = _metadata(RECS_KEY)
        reply = await recommendations.GetRecommendations(request, metadata=recs, timeout=5)
        assert reply.user_id == 101
        assert await _code(
            users.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=recs, timeout=5)
        ) == (
            grpc.StatusCode.PERMISSION_DENIED,
            f"client recs may not call /{USERS}/GetUser",
        )
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=reader, timeout=5
        )
        names = [service.name async for reply in listing for service in reply.list_services_response.service]
        assert USERS in names


async def test_a_key_without_allow_list_calls_everything(acl_gateway: Started) -> None:
    async with grpc.aio.insecure_channel(acl_gateway.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        replies = [
            user
            async for user in users.ListUsers(
                users_pb2.ListUsersRequest(), metadata=_metadata(KEY), timeout=5
            )
        ]
        assert replies


@pytest.fixture
async def lockout_gateway(services: Services, tmp_path: Path) -> AsyncIterator[Started]:
    text = gateway_toml(services.routes) + "\n[auth]\nmax_failures = 3\nfailure_window = 30\n"
    with gateway_process(write_config(tmp_path, text)) as started:
        yield started


GET_USER = f"/{USERS}/GetUser"
A_USER = grpc_frame(users_pb2.GetUserRequest(user_id=102).SerializeToString())


async def _raw_call(
    port: int, source: str, key: str | None, path: str = GET_USER, body: bytes = A_USER
) -> Reply:
    """A call over raw HTTP/2 from the loopback address ``source``: grpc clients cannot pick theirs."""
    return await asyncio.to_thread(exchange, port, grpc_request(path, key=key), body, source=source)


async def test_an_address_with_too_many_invalid_keys_is_locked_out_alone(lockout_gateway: Started) -> None:
    port = lockout_gateway.port
    for guess in ("guess-1", "guess-2", "guess-3"):
        reply = await _raw_call(port, "127.0.0.2", guess)
        assert (reply.grpc_status, reply.grpc_message) == (16, "invalid API key")

    # Now even the right key gets no answer from that address, for the rest of the 30 s window.
    locked = await _raw_call(port, "127.0.0.2", KEY)
    assert locked.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert locked.grpc_message.startswith("too many invalid API keys from this address; try again in ")
    retry_after = int(locked.trailers.get("retry-after", locked.headers.get("retry-after", "0")))
    assert 25 <= retry_after <= 30
    # Whatever it calls, a streaming method or an unrouted one.
    for path in (f"/{RECOMMENDATIONS}/StreamRecommendations", "/shop.orders.v1.OrderService/GetOrder"):
        reply = await _raw_call(port, "127.0.0.2", KEY, path)
        assert reply.grpc_message.startswith("too many invalid API keys"), path
    # Health needs no key, so it still answers there.
    health = await _raw_call(port, "127.0.0.2", None, "/grpc.health.v1.Health/Check", grpc_frame(b""))
    assert health.grpc_status == 0

    # Another address is not affected: a grpc client on 127.0.0.1, and raw calls from 127.0.0.3.
    assert (await get_user(lockout_gateway.address)).code == grpc.StatusCode.OK
    assert (await _raw_call(port, "127.0.0.3", KEY)).grpc_status == 0


async def test_a_missing_key_is_not_a_guess(lockout_gateway: Started) -> None:
    for _ in range(5):
        reply = await _raw_call(lockout_gateway.port, "127.0.0.4", None)
        assert (reply.grpc_status, reply.grpc_message) == (16, "missing x-api-key metadata")
    assert (await _raw_call(lockout_gateway.port, "127.0.0.4", KEY)).grpc_status == 0


async def test_health_can_need_a_key_and_reflection_can_be_off(services: Services, tmp_path: Path) -> None:
    text = gateway_toml(services.routes) + "\n[health]\npublic = false\n\n[reflection]\nenabled = false\n"
    with gateway_process(write_config(tmp_path, text), health_metadata=_metadata(KEY)) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service=USERS)
            assert await _code(health.Check(check, timeout=5)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing x-api-key metadata",
            )
            reply = await health.Check(check, metadata=_metadata(KEY), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            # Nothing written: grpc's aio client, still writing when a bidi call is refused, may
            # report "Internal error from Core" instead of the status it was sent.
            listing = reflection.ServerReflectionInfo(metadata=_metadata(KEY), timeout=5)
            code, details = await _code(listing)
            assert code == grpc.StatusCode.UNIMPLEMENTED
            assert "grpc.reflection.v1alpha.ServerReflection is not routed by this gateway" in details


async def test_a_long_path_is_named_shortened(acl_gateway: Started) -> None:
    path = f"/{'a' * 3000}/Method"
    async with grpc.aio.insecure_channel(acl_gateway.address) as channel:
        code, details = await _code(channel.unary_unary(path)(b"", metadata=_metadata(READER_KEY), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"client reader may not call {path[:200]}…"


async def test_default_metadata_limit_is_8_kib_every_time(services: Services, tmp_path: Path) -> None:
    # gRPC's defaults refuse metadata between 8 and 16 KiB at random, in the gateway and in an upstream;
    # the gateway's limit is exact, and what passes it an upstream with defaults takes too, with the
    # headers the gateway adds (x-client-id, x-request-id): 7,500 bytes here reach 8,199 upstream on
    # the aio engine, over grpc's soft limit, refused there about once in 300 calls.
    with gateway_process(write_config(tmp_path, gateway_toml(services.routes, rules=""))) as gateway:
        for _ in range(10):
            result = await get_user(gateway.address, metadata=(("x-note", "n" * 7_300),))
            assert result.code == grpc.StatusCode.OK, result
        result = await get_user(gateway.address, metadata=(("x-note", "n" * 8_500),))
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    if gateway_engine() == "native":  # its own words, naming the limit
        assert "over the gateway's limit of 8192 bytes ([limits] max_metadata_bytes)" in result.details
    else:  # grpc core's
        assert "received metadata size exceeds hard limit" in result.details
