"""What the bench sends and expects: the data set the user service serves, request bodies, reply sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shop.users.v1 import users_pb2

from bench.loadgen import grpc_frame

GET_USER = "/shop.users.v1.UserService/GetUser"
LIST_USERS = "/shop.users.v1.UserService/ListUsers"
USER_ID = 101
EXPECTED_USER = users_pb2.User(user_id=USER_ID, name="Atul", segment="premium")
# The reference data's users; the rest of the data set is generated around them.
_REFERENCE_USERS = (
    (101, "Atul", "premium"),
    (102, "Anagha", "luxury"),
    (103, "Aman", "premium"),
    (104, "Sean", "ultra luxury"),
)
_SEGMENTS = ("premium", "luxury", "ultra luxury", "standard")
MIN_USERS = len(_REFERENCE_USERS)


def users(count: int) -> list[users_pb2.User]:
    """``count`` users (at least the four of the reference data), by ascending id, as ListUsers sends them."""
    chosen = [users_pb2.User(user_id=i, name=n, segment=s) for i, n, s in _REFERENCE_USERS]
    next_id = 1000
    while len(chosen) < count:
        chosen.append(
            users_pb2.User(
                user_id=next_id, name=f"Shopper {next_id}", segment=_SEGMENTS[next_id % len(_SEGMENTS)]
            )
        )
        next_id += 1
    return sorted(chosen, key=lambda user: user.user_id)


def write_data_set(path: Path, all_users: list[users_pb2.User]) -> None:
    """Write ``all_users`` in the services' ``--data`` JSON format (no recommendations)."""
    document = {
        "users": [{"user_id": u.user_id, "name": u.name, "segment": u.segment} for u in all_users],
        "recommendations": {},
    }
    path.write_text(json.dumps(document))


@dataclass(frozen=True)
class Call:
    """One call the load generator repeats: method, request body file, and the reply data it must get."""

    method: str
    body: Path
    reply_bytes: int
    """Bytes of gRPC data (length prefixes and messages) in one correct reply."""


def get_user_call(folder: Path) -> Call:
    """``GetUser(user_id=101)``, answered by one ``User`` message (Atul, premium)."""
    body = folder / "get_user.bin"
    body.write_bytes(grpc_frame(users_pb2.GetUserRequest(user_id=USER_ID).SerializeToString()))
    return Call(GET_USER, body, len(grpc_frame(EXPECTED_USER.SerializeToString())))


def list_users_call(folder: Path, all_users: list[users_pb2.User]) -> Call:
    """``ListUsers()`` (every segment), answered by a stream of every user."""
    body = folder / "list_users.bin"
    body.write_bytes(grpc_frame(users_pb2.ListUsersRequest().SerializeToString()))
    reply = sum(len(grpc_frame(user.SerializeToString())) for user in all_users)
    return Call(LIST_USERS, body, reply)
