"""Probes as operators type them: grpcurl's health check needs no key, and reflection without a key
describes only what needs none."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.security_support import gateway_process
from tests.support.processes import grpcurl

KEY = ("-H", "x-api-key: secret-key")
HEALTH = "grpc.health.v1.Health"
REFLECTION_SERVICES = {"grpc.reflection.v1alpha.ServerReflection"}  # what reflection lists of itself


def test_a_health_probe_needs_no_key(gateway: str) -> None:
    checked = grpcurl("-plaintext", gateway, f"{HEALTH}/Check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"status": "SERVING"}
    service = grpcurl("-plaintext", "-d", json.dumps({"service": USERS}), gateway, f"{HEALTH}/Check")
    assert json.loads(service.stdout) == {"status": "SERVING"}, service.stderr


def test_reflection_without_a_key_describes_only_what_needs_none(gateway: str) -> None:
    listed = grpcurl("-plaintext", gateway, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {HEALTH, *REFLECTION_SERVICES}

    described = grpcurl("-plaintext", gateway, "describe", USERS)
    assert described.returncode != 0
    assert f"{USERS} is described only to callers with credentials: send x-api-key" in described.stderr
    called = grpcurl("-plaintext", "-d", '{"user_id": 101}', gateway, f"{USERS}/GetUser")
    assert called.returncode != 0
    assert "send x-api-key" in called.stderr

    with_key = grpcurl("-plaintext", *KEY, gateway, "list")
    assert set(with_key.stdout.split()) == {USERS, RECOMMENDATIONS, HEALTH, *REFLECTION_SERVICES}
    wrong_key = grpcurl("-plaintext", "-H", "x-api-key: not-the-key", gateway, "list")
    assert wrong_key.returncode != 0
    assert "invalid API key" in wrong_key.stderr


async def test_a_forged_client_id_gets_no_more_than_no_key(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = stub.ServerReflectionInfo(iter([ask]), metadata=(("x-client-id", "demo"),), timeout=5)
        names = {service.name async for reply in replies for service in reply.list_services_response.service}
    assert names == {HEALTH, *REFLECTION_SERVICES}


def test_health_that_needs_a_key_keeps_reflection_keyed(services: Services, tmp_path: Path) -> None:
    config = write_config(tmp_path, gateway_toml(services.routes) + "\n[health]\npublic = false\n")
    with gateway_process(config, health_metadata=(("x-api-key", "secret-key"),)) as started:
        refused = grpcurl("-plaintext", started.address, "list")
    assert refused.returncode != 0
    assert "missing x-api-key metadata" in refused.stderr
