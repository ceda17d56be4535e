"""shop.users.v1.UserService through the generated stubs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from shop.users.v1 import users_pb2

if TYPE_CHECKING:
    from shop.users.v1.users_pb2_grpc import UserServiceAsyncStub


def user(user_id: int, name: str, segment: str) -> users_pb2.User:
    return users_pb2.User(user_id=user_id, name=name, segment=segment)


ATUL, ANAGHA, AMAN, SEAN = (
    user(101, "Atul", "premium"),
    user(102, "Anagha", "luxury"),
    user(103, "Aman", "premium"),
    user(104, "Sean", "ultra luxury"),
)


@pytest.mark.parametrize("expected", [ATUL, ANAGHA, AMAN, SEAN], ids=lambda u: u.name)
async def test_get_user(users: UserServiceAsyncStub, expected: users_pb2.User) -> None:
    reply = await users.GetUser(users_pb2.GetUserRequest(user_id=expected.user_id), timeout=5)
    assert reply == expected


async def test_get_unknown_user_is_not_found(users: UserServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await users.GetUser(users_pb2.GetUserRequest(user_id=999), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "user 999 not found"


@pytest.mark.parametrize("user_id", [0, -7])
async def test_get_user_with_non_positive_id_is_invalid(users: UserServiceAsyncStub, user_id: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"user_id must be a positive integer, got {user_id}"


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("", [ATUL, ANAGHA, AMAN, SEAN]),
        ("premium", [ATUL, AMAN]),
        # Exact match: "luxury" does not include "ultra luxury".
        ("luxury", [ANAGHA]),
        ("ultra luxury", [SEAN]),
        ("budget", []),
    ],
)
async def test_list_users(users: UserServiceAsyncStub, segment: str, expected: list[users_pb2.User]) -> None:
    call = users.ListUsers(users_pb2.ListUsersRequest(segment=segment), timeout=5)
    assert [reply async for reply in call] == expected
    assert await call.code() == grpc.StatusCode.OK
