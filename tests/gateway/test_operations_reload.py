"""SIGHUP reloads the config atomically: new calls use it, calls in flight finish under the old one,
budgets already spent stay spent, and a bad new config is refused while the old one keeps serving."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2 as rec_pb2
from shop.recommendations.v1 import recommendations_pb2_grpc as rec_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.support.processes import free_port, grpcurl, running, stderr_text

RULE = '\n[[rate_limit.rules]]\nname = "per-user"\nrate = "3/30 seconds"\nkey = "field:user_id"\n'
SECOND_KEY = '\n[[api_keys]]\nclient = "second"\nkey = "second-key"\n'


@contextmanager
def reloadable_gateway(config: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    with running(
        ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"], port
    ) as process:
        yield f"127.0.0.1:{port}", process


async def hang_up(process: subprocess.Popen[str], outcome: str) -> None:
    """Send SIGHUP and wait until the gateway logs ``outcome`` once more than before."""
    before = stderr_text(process).count(outcome)
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while stderr_text(process).count(outcome) == before:
        assert time.monotonic() < deadline, f"no {outcome!r} in the gateway's log"
        await asyncio.sleep(0.02)


async def get_user(channel: grpc.aio.Channel, user_id: int, key: str = "secret-key") -> grpc.StatusCode:
    try:
        await users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), metadata=(("x-api-key", key),), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


OK, REFUSED, UNAUTHENTICATED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
)


async def test_reload_keeps_budgets_and_refuses_a_bad_config(services: Services, tmp_path: Path) -> None:
    config = write_config(tmp_path, gateway_toml(services.routes, rules=RULE))
    with reloadable_gateway(config) as (address, process):
        async with grpc.aio.insecure_channel(address) as channel:
            assert [await get_user(channel, 101) for _ in range(2)] == [OK, OK]
            assert await get_user(channel, 102, "second-key") == UNAUTHENTICATED

            config.write_text(gateway_toml(services.routes, rules=RULE + SECOND_KEY))
            await hang_up(process, '"message": "config reloaded"')
            assert await get_user(channel, 102, "second-key") == OK
            # User 101 had spent 2 of 3 before the reload.
            assert [await get_user(channel, 101) for _ in range(2)] == [OK, REFUSED]

            config.write_text(gateway_toml(services.routes, rules=RULE.replace("3/30 seconds", "three")))
            await hang_up(process, '"message": "config reload rejected; the running config stays"')
            assert "rate_limit.rules[0].rate: 'three' is not a rate" in stderr_text(process)
            assert await get_user(channel, 103, "second-key") == OK
        assert process.poll() is None


async def test_calls_in_flight_finish_under_the_old_config(services: Services, tmp_path: Path) -> None:
    config = write_config(tmp_path, gateway_toml(services.routes, rules=""))
    with reloadable_gateway(config) as (address, process):
        async with grpc.aio.insecure_channel(address) as channel:
            key = (("x-api-key", "secret-key"),)
            recommendations = rec_grpc.RecommendationServiceStub(channel)
            stream = recommendations.StreamRecommendations(metadata=key, timeout=15)
            await stream.write(rec_pb2.GetRecommendationsRequest(user_id=101))
            assert (await stream.read()).user_id == 101

            # The new config no longer routes the recommendation service.
            config.write_text(gateway_toml({USERS: services.users}, rules=""))
            await hang_up(process, '"message": "config reloaded"')

            await stream.write(rec_pb2.GetRecommendationsRequest(user_id=102))
            assert list((await stream.read()).recommendations) == ["dress", "shoes", "handbag"]
            await stream.done_writing()
            assert await stream.code() == OK

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await recommendations.GetRecommendations(
                    rec_pb2.GetRecommendationsRequest(user_id=101), metadata=key, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert caught.value.details() == f"service {RECOMMENDATIONS} is not routed by this gateway"
            assert await get_user(channel, 101) == OK

        listed = await asyncio.to_thread(
            grpcurl, "-plaintext", "-H", "x-api-key: secret-key", address, "list"
        )
        assert USERS in listed.stdout.split()
        assert RECOMMENDATIONS not in listed.stdout.split()
