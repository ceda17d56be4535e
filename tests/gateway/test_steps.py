"""Steps of the user's own in the call chain, through a real gateway (both engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.conftest import start_gateway
from tests.gateway.security_support import gateway_process, run_main
from tests.gateway.test_operations_reload import hang_up, reloadable_gateway
from tests.gateway.upstream_double import ECHO, FAIL_WITH_DETAILS, Recorder, start_upstream
from tests.support.processes import stderr_text

KEY = ("x-api-key", "secret-key")
TENANTS = """
[[steps]]
use = "examples.tenants:RequireTenantHeader"
after = "auth"
options = { header = "x-tenant", allowed = ["acme", "globex"] }
"""
TWO_PER_CLIENT = """
[[rate_limit.rules]]
rate = "2/30 seconds"
key = "client"
"""


def step(use: str, where: str = 'after = "auth"', options: str = "") -> str:
    return f'\n[[steps]]\nuse = "{use}"\n{where}\n{options}\n'


async def get_user(address: str, user_id: int, *metadata: tuple[str, str]) -> grpc.aio.UnaryUnaryCall:
    async with grpc.aio.insecure_channel(address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), metadata=metadata, timeout=5
        )
        await call.code()
        return call


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server, port = await start_upstream(recorder)
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await server.stop(None)


def config_with(tmp_path: Path, upstream: str, steps: str, rules: str = "") -> Path:
    return write_config(tmp_path, gateway_toml({USERS: upstream}, rules=rules) + steps)


async def test_the_tenant_example_refuses_and_forwards(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    address, recorder = upstream
    with start_gateway(config_with(tmp_path, address, TENANTS)) as gateway:
        missing = await get_user(gateway, ECHO, KEY)
        assert await missing.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await missing.details() == "missing x-tenant metadata; send one of: acme, globex"
        assert "x-request-id" in dict(await missing.initial_metadata())
        other = await get_user(gateway, ECHO, KEY, ("x-tenant", "initech"))
        assert await other.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await other.details() == "tenant initech may not call this gateway"
        # Auth runs before the tenant step: without a key, the key is what the caller hears about.
        unauthenticated = await get_user(gateway, ECHO, ("x-tenant", "initech"))
        assert await unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
        assert recorder.metadata == []
        allowed = await get_user(gateway, ECHO, KEY, ("x-tenant", "acme"))
        assert await allowed.code() == grpc.StatusCode.OK
    assert recorder.metadata[-1]["x-tenant-id"] == "acme"
    assert recorder.metadata[-1]["x-tenant"] == "acme"


async def test_a_refusal_by_a_step_before_the_limiter_spends_no_budget(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    address, _ = upstream
    with start_gateway(config_with(tmp_path, address, TENANTS, TWO_PER_CLIENT)) as gateway:
        for _ in range(3):
            refused = await get_user(gateway, ECHO, KEY, ("x-tenant", "initech"))
            assert await refused.code() == grpc.StatusCode.PERMISSION_DENIED
        codes = [await (await get_user(gateway, ECHO, KEY, ("x-tenant", "acme"))).code() for _ in range(3)]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]


async def test_a_step_that_raises_fails_its_call_only(tmp_path: Path, upstream: tuple[str, Recorder]) -> None:
    address, recorder = upstream
    config = config_with(tmp_path, address, step("tests.gateway.steps_support:Explodes"))
    with start_gateway(config) as gateway:
        for _ in range(3):
            call = await get_user(gateway, ECHO, KEY)
            assert await call.code() == grpc.StatusCode.INTERNAL
            assert await call.details() == "step explodes failed"
        # The gateway keeps serving: health needs no key and meets no user step's refusal.
        async with grpc.aio.insecure_channel(gateway) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert recorder.metadata == []


async def test_a_failing_step_is_logged_once_with_its_traceback(tmp_path: Path) -> None:
    # The gateway alone is enough: the step refuses before any upstream is needed.
    config = config_with(tmp_path, "127.0.0.1:1", step("tests.gateway.steps_support:Explodes"))
    with gateway_process(config) as gateway:
        for _ in range(5):
            call = await get_user(gateway.address, ECHO, KEY)
            assert await call.code() == grpc.StatusCode.INTERNAL
        logged = stderr_text(gateway.process)
    assert logged.count("a step failed") == 1
    assert logged.count("RuntimeError: a bug in the user's step") == 1


async def test_a_waiting_step_is_bounded_by_its_timeout(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    address, recorder = upstream
    steps = step("tests.gateway.steps_support:Slow", options="options = { seconds = 5 }\ntimeout = 0.2")
    with start_gateway(config_with(tmp_path, address, steps)) as gateway:
        call = await get_user(gateway, ECHO, KEY)
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert await call.details() == "step slow did not answer within 0.2 s"
    assert recorder.metadata == []


async def test_a_waiting_step_may_add_metadata(tmp_path: Path, upstream: tuple[str, Recorder]) -> None:
    address, recorder = upstream
    steps = step("tests.gateway.steps_support:Slow", options="options = { seconds = 0.01 }")
    with start_gateway(config_with(tmp_path, address, steps)) as gateway:
        call = await get_user(gateway, ECHO, KEY)
        assert await call.code() == grpc.StatusCode.OK
    assert recorder.metadata[-1]["x-checked-by"] == "slow"


async def test_a_step_may_read_the_request(tmp_path: Path, upstream: tuple[str, Recorder]) -> None:
    address, recorder = upstream
    steps = step(
        "tests.gateway.steps_support:BlockUser", options=f"options = {{ user_id = {FAIL_WITH_DETAILS} }}"
    )
    with start_gateway(config_with(tmp_path, address, steps)) as gateway:
        blocked = await get_user(gateway, FAIL_WITH_DETAILS, KEY)
        assert await blocked.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await blocked.details() == f"user {FAIL_WITH_DETAILS} is blocked"
        allowed = await get_user(gateway, ECHO, KEY)
        assert await allowed.code() == grpc.StatusCode.OK
    assert len(recorder.metadata) == 1


STEP_CONFIG_ERRORS = {
    "module not found": (
        step("nowhere.steps:Check"),
        "steps[0].use: cannot import nowhere.steps (ModuleNotFoundError: No module named 'nowhere')",
    ),
    "no such class": (
        step("examples.tenants:Missing"),
        "steps[0].use: examples.tenants has no Missing",
    ),
    "not a step": (
        step("tests.gateway.steps_support:NoCheck"),
        "steps[0].use: tests.gateway.steps_support:NoCheck has no check(call) method",
    ),
    "options rejected": (
        step(
            "examples.tenants:RequireTenantHeader",
            options='options = { header = "X-Tenant", allowed = ["a"] }',
        ),
        "steps[0].options: RequireTenantHeader rejects its options: header 'X-Tenant' must be a lower-case "
        "metadata key",
    ),
    "unknown option": (
        step("examples.tenants:RequireTenantHeader", options='options = { tenants = ["a"] }'),
        "steps[0].options: RequireTenantHeader rejects its options: RequireTenantHeader.__init__() got an "
        "unexpected keyword argument 'tenants'",
    ),
    "no such neighbour": (
        step("examples.tenants:RequireTenantHeader", 'after = "authz"', 'options = { allowed = ["a"] }'),
        "steps[0].after: there is no step named 'authz' to go next to "
        "(steps: metadata, auth, route, rate_limit)",
    ),
    "no place": (
        step("examples.tenants:RequireTenantHeader", "", 'options = { allowed = ["a"] }'),
        "steps[0]: give exactly one of after or before: the step it goes next to",
    ),
    "not module:Class": (step("examples.tenants", 'after = "auth"'), "steps[0].use: String should match"),
}


@pytest.mark.parametrize("case", STEP_CONFIG_ERRORS, ids=list(STEP_CONFIG_ERRORS))
def test_step_config_errors_name_the_table(case: str, tmp_path: Path) -> None:
    steps, expected = STEP_CONFIG_ERRORS[case]
    config = config_with(tmp_path, "127.0.0.1:1", steps)
    code, stderr = run_main("--config", str(config), "--listen", "127.0.0.1:0")
    assert code == 2
    assert expected in stderr


async def test_a_reload_adds_a_step_and_refuses_a_broken_one(
    tmp_path: Path, upstream: tuple[str, Recorder]
) -> None:
    address, _ = upstream
    config = config_with(tmp_path, address, "")
    with reloadable_gateway(config) as (gateway, process):
        assert await (await get_user(gateway, ECHO, KEY)).code() == grpc.StatusCode.OK
        config.write_text(config.read_text() + step("nowhere.steps:Check"))
        await hang_up(process, "config reload rejected")
        assert "steps[0].use: cannot import nowhere.steps" in stderr_text(process)
        assert await (await get_user(gateway, ECHO, KEY)).code() == grpc.StatusCode.OK
        config.write_text(config_with(tmp_path, address, TENANTS).read_text())
        await hang_up(process, "config reloaded")
        refused = await get_user(gateway, ECHO, KEY)
        assert await refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        allowed = await get_user(gateway, ECHO, KEY, ("x-tenant", "globex"))
        assert await allowed.code() == grpc.StatusCode.OK
