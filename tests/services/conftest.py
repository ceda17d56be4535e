"""The two demo services as real processes on free loopback ports, and stubs to call them."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2_grpc
from shop.users.v1 import users_pb2_grpc

from tests.support.processes import free_port, running

if TYPE_CHECKING:
    from shop.recommendations.v1.recommendations_pb2_grpc import RecommendationServiceAsyncStub
    from shop.users.v1.users_pb2_grpc import UserServiceAsyncStub

USERS = "shop.users.v1.UserService"
RECOMMENDATIONS = "shop.recommendations.v1.RecommendationService"
MODULES = {USERS: "services.users", RECOMMENDATIONS: "services.recommendations"}


@dataclass(frozen=True)
class Server:
    """A service process and the address it serves on."""

    proc: subprocess.Popen[str]
    address: str


@contextmanager
def start(service: str, *options: str) -> Iterator[Server]:
    """Run ``service`` (a full proto service name) with ``options`` on a free port, while in the block."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["-m", MODULES[service], "--listen", address, *options]
    with running(args, port, health_service=service) as proc:
        yield Server(proc, address)


@pytest.fixture(scope="session")
def user_service() -> Iterator[Server]:
    """The user service on the reference data, shared by every test (it keeps no state)."""
    with start(USERS) as server:
        yield server


@pytest.fixture(scope="session")
def recommendation_service() -> Iterator[Server]:
    """The recommendation service on the reference data, shared by every test (it keeps no state)."""
    with start(RECOMMENDATIONS) as server:
        yield server


@pytest.fixture
async def users(user_service: Server) -> AsyncIterator[UserServiceAsyncStub]:
    async with grpc.aio.insecure_channel(user_service.address) as channel:
        # grpcio has no type hints, so mypy cannot tell that an aio channel makes an aio stub.
        yield cast("UserServiceAsyncStub", users_pb2_grpc.UserServiceStub(channel))


@pytest.fixture
async def recommendations(recommendation_service: Server) -> AsyncIterator[RecommendationServiceAsyncStub]:
    async with grpc.aio.insecure_channel(recommendation_service.address) as channel:
        yield cast(
            "RecommendationServiceAsyncStub", recommendations_pb2_grpc.RecommendationServiceStub(channel)
        )
