"""A real UserService upstream whose behaviour each test controls, served in the test process.

It records what reached it (metadata, cancellations) so that tests can assert what the
gateway forwarded: things the real services have no reason to expose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.rpc import code_pb2, error_details_pb2, status_pb2
from shop.users.v1 import users_pb2, users_pb2_grpc

from runtime.introspection import add_health

ECHO, FAIL_WITH_DETAILS, SLOW, LARGE = 1, 2, 3, 4
SLOW_SECONDS = 5.0
LARGE_NAME_BYTES = 1024 * 1024
# ListUsers(segment=BREAKS_OFF) sends one user, then fails.
BREAKS_OFF = "breaks-off"


@dataclass
class Recorder:
    metadata: list[dict[str, str | bytes]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def rich_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="USER_LOCKED", domain="users.shop")
    packed = AnyMessage()
    packed.Pack(info)
    return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="user 2 is locked", details=[packed])


class ControlledUsers(users_pb2_grpc.UserServiceServicer):
    """GetUser(1) echoes; GetUser(2) fails with rich details; GetUser(3) is slow; GetUser(4) is a 1 MiB
    user; ListUsers never ends (but for segment BREAKS_OFF: one user, then ABORTED)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.User:
        self.recorder.metadata.append(dict(context.invocation_metadata()))
        if request.user_id == FAIL_WITH_DETAILS:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "user 2 is locked",
                (("grpc-status-details-bin", rich_status().SerializeToString()), ("x-why", "locked")),
            )
        if request.user_id == SLOW:
            try:
                await asyncio.sleep(SLOW_SECONDS)
            except asyncio.CancelledError:
                self.recorder.cancelled.set()
                raise
        if request.user_id == LARGE:
            return users_pb2.User(user_id=LARGE, name="x" * LARGE_NAME_BYTES)
        await context.send_initial_metadata((("x-upstream-header", "hello"),))
        context.set_trailing_metadata((("x-upstream-trailer", "bye"), ("x-trace-bin", b"\x00\x01")))
        return users_pb2.User(user_id=request.user_id, name="echo", segment="test")

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[users_pb2.User]:
        if request.segment == BREAKS_OFF:
            yield users_pb2.User(user_id=1, name="user 1")
            await context.abort(grpc.StatusCode.ABORTED, "the listing broke off")
        number = 0
        try:
            while True:
                number += 1
                yield users_pb2.User(user_id=number, name=f"user {number}")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.recorder.cancelled.set()
            raise


async def start_upstream(recorder: Recorder, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    users_pb2_grpc.add_UserServiceServicer_to_server(ControlledUsers(recorder), server)
    await add_health(server).set("", 1)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound
