"""Starting, serving health, refusing bad data or a busy port, and stopping gracefully."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from runtime.serving import stop
from tests.services.conftest import MODULES, RECOMMENDATIONS, USERS, Server, start
from tests.services.logs import log_entries, wait_for_entry
from tests.support.processes import free_port, stderr_text

PROGS = {USERS: "user-service", RECOMMENDATIONS: "recommendation-service"}


def run_to_exit(service: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``service`` with ``options`` on a free port, expecting it to exit by itself."""
    args = [sys.executable, "-m", MODULES[service], "--listen", f"127.0.0.1:{free_port()}", *options]
    return subprocess.run(args, capture_output=True, text=True, timeout=15, check=False)


@pytest.mark.parametrize(
    ("service", "check", "status"),
    [
        (USERS, "", health_pb2.HealthCheckResponse.SERVING),
        (USERS, USERS, health_pb2.HealthCheckResponse.SERVING),
        (RECOMMENDATIONS, "", health_pb2.HealthCheckResponse.SERVING),
        (RECOMMENDATIONS, RECOMMENDATIONS, health_pb2.HealthCheckResponse.SERVING),
    ],
)
async def test_health(
    user_service: Server, recommendation_service: Server, service: str, check: str, status: int
) -> None:
    server = user_service if service == USERS else recommendation_service
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=check), timeout=5
        )
    assert reply.status == status


async def test_health_of_another_service_is_not_found(user_service: Server) -> None:
    async with grpc.aio.insecure_channel(user_service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=RECOMMENDATIONS), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sigterm_lets_an_open_stream_finish() -> None:
    ask = recommendations_pb2.GetRecommendationsRequest
    with start(RECOMMENDATIONS) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
            call = stub.StreamRecommendations(timeout=10)
            await call.write(ask(user_id=101))
            assert (await call.read()).user_id == 101

            server.proc.send_signal(signal.SIGTERM)
            await wait_for_entry(server.proc, message="shutting down")
            await call.write(ask(user_id=102))
            reply = await call.read()
            assert list(reply.recommendations) == ["dress", "shoes", "handbag"]
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

            assert server.proc.wait(timeout=10) == 0
            messages = [entry["message"] for entry in log_entries(server.proc)]
            assert messages[-1] == "stopped"
            assert "Traceback" not in stderr_text(server.proc)


async def test_stopping_lets_a_call_that_has_just_ended_wind_down() -> None:
    """A call's task that is still winding down when the server has stopped gets to return.

    grpc.aio's stop returns once grpc-core has no live call; the Python task of a call that has just
    sent its status may still be running, and the loop's close would cancel it: grpc then logs an
    error and a traceback for a call that ended well (``test_sigterm_lets_an_open_stream_finish``
    met that now and then). The race cannot be timed from outside, so a task stands in for the call's,
    under the name grpc.aio gives it.
    """
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    winding_down = asyncio.create_task(asyncio.sleep(0.2), name="rpc_task")
    await stop(server, 5)
    assert winding_down.done()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it: No such file or directory"),
        ('{"users": [', "Invalid JSON: EOF while parsing a list at line 1 column 11"),
        (
            json.dumps(
                {
                    "users": [
                        {"user_id": 1, "name": "A", "segment": "s"},
                        {"user_id": 2, "name": "B", "segment": "s"},
                        {"user_id": 0, "name": "C", "segment": "s"},
                    ],
                    "recommendations": {},
                }
            ),
            "users.2.user_id: Input should be greater than 0",
        ),
        ('{"users": []}', "recommendations: Field required"),
        (
            json.dumps({"users": [{"user_id": 1, "name": "A", "segment": "s"}] * 2, "recommendations": {}}),
            "users: user_id 1 appears more than once",
        ),
        (
            '{"users": [], "recommendations": {"first": ["x"]}}',
            "recommendations.first.[key]: Input should be",
        ),
    ],
    ids=["missing", "malformed", "schema", "incomplete", "duplicate", "bad-key"],
)
def test_bad_data_file_exits_2_naming_file_and_problem(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "shop-data.json"
    if content is not None:
        path.write_text(content)
    result = run_to_exit(USERS, "--data", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"user-service: error: data file {path}: {problem}")
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stderr


def test_bad_data_file_stops_the_recommendation_service_too(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("")
    result = run_to_exit(RECOMMENDATIONS, "--data", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"recommendation-service: error: data file {path}: Invalid JSON")


def test_bad_listen_address_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULES[USERS], "--listen", "50051"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 2
    assert "user-service: error: argument --listen" in result.stderr
    assert "is not an address of the form HOST:PORT" in result.stderr


@pytest.mark.parametrize("service", [USERS, RECOMMENDATIONS])
async def test_busy_port_is_refused_without_traceback(
    user_service: Server, recommendation_service: Server, service: str
) -> None:
    taken = user_service.address
    args = [sys.executable, "-m", MODULES[service], "--listen", taken]
    result = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=15, check=False
    )
    assert result.returncode == 1
    assert f"{PROGS[service]}: error: cannot listen on {taken}" in result.stderr
    assert "Traceback" not in result.stderr
    # The service that holds the port is unaffected.
    async with grpc.aio.insecure_channel(taken) as channel:
        reply = await users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=101), timeout=5
        )
    assert reply.name == "Atul"


async def test_another_data_set_is_served(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(
        json.dumps(
            {
                "users": [
                    {"user_id": 7, "name": "Grace", "segment": "staff"},
                    {"user_id": 3, "name": "Ada", "segment": "staff"},
                ],
                "recommendations": {"7": ["compiler", "notebook"], "3": ["notebook", "loom"]},
            }
        )
    )
    ask = recommendations_pb2.GetRecommendationsRequest
    with start(USERS, "--data", str(path)) as users_server:
        async with grpc.aio.insecure_channel(users_server.address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            listed = [
                u async for u in users.ListUsers(users_pb2.ListUsersRequest(segment="staff"), timeout=5)
            ]
            assert [(u.user_id, u.name) for u in listed] == [(3, "Ada"), (7, "Grace")]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await users.GetUser(users_pb2.GetUserRequest(user_id=101), timeout=5)
            assert raised.value.details() == "user 101 not found"
    with start(RECOMMENDATIONS, "--data", str(path)) as recommendations_server:
        async with grpc.aio.insecure_channel(recommendations_server.address) as channel:
            stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
            group = await stub.RecommendForGroup(iter([ask(user_id=7), ask(user_id=3)]), timeout=5)
            assert list(group.recommendations) == ["compiler", "notebook", "loom"]
