"""Who may call what: keys, the public health service, reflection through the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services, start_gateway
from tests.support.processes import grpcurl

KEY = (("x-api-key", "secret-key"),)


async def test_health_needs_no_key_and_covers_each_route(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", USERS, RECOMMENDATIONS):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_health_follows_a_dead_upstream(services: Services, tmp_path: Path) -> None:
    routes = {USERS: services.users, RECOMMENDATIONS: "127.0.0.1:1"}
    with start_gateway(write_config(tmp_path, gateway_toml(routes))) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest
            assert (await stub.Check(check(service=USERS), timeout=5)).status == 1
            assert (await stub.Check(check(service=RECOMMENDATIONS), timeout=5)).status == 2
            assert (await stub.Check(check(service=""), timeout=5)).status == 1


async def test_rejected_calls_spend_no_budget(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetUser(
                    users_pb2.GetUserRequest(user_id=101), metadata=(("x-api-key", "x"),), timeout=5
                )
        call = stub.GetUser(users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5)
        await call
        assert dict(await call.initial_metadata())["x-ratelimit-remaining"] == "4"


def test_reflection_through_gateway_needs_a_key(gateway: str) -> None:
    # Without one it describes only what needs none (tests/gateway/test_operations_probes.py).
    keyless = grpcurl("-plaintext", gateway, "list")
    assert keyless.returncode == 0, keyless.stderr
    assert USERS not in keyless.stdout.split()

    listed = grpcurl("-plaintext", "-H", "x-api-key: secret-key", gateway, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {USERS, RECOMMENDATIONS, "grpc.health.v1.Health"}

    described = grpcurl("-plaintext", "-H", "x-api-key: secret-key", gateway, "describe", USERS)
    assert described.returncode == 0, described.stderr
    assert (
        "rpc GetUser ( .shop.users.v1.GetUserRequest ) returns ( .shop.users.v1.User ) {\n"
        '    option (.google.api.http) = { get:"/v1/users/{user_id}"  };\n' in described.stdout
    )
    assert "// Looks up shoppers by id or by segment." in described.stdout


@pytest.fixture
def public_reflection_gateway(services: Services, tmp_path: Path) -> Iterator[str]:
    text = gateway_toml(services.routes) + "\n[reflection]\npublic = true\n"
    with start_gateway(write_config(tmp_path, text)) as address:
        yield address


def test_reflection_can_be_public(public_reflection_gateway: str) -> None:
    listed = grpcurl("-plaintext", public_reflection_gateway, "list")
    assert listed.returncode == 0, listed.stderr
    assert USERS in listed.stdout.split()
    # Calls still need a key.
    call = grpcurl("-plaintext", "-d", '{"user_id": 101}', public_reflection_gateway, f"{USERS}/GetUser")
    assert "Code: Unauthenticated" in call.stdout + call.stderr
