"""Real gRPC calls through each path before it is timed: h2load alone cannot see a gRPC error.

h2load counts HTTP 200 as success, and a gRPC error is an HTTP 200 too; so before any timing the
bench makes the same calls with the generated stubs and checks the replies, that auth ran, and
that the rate limiter ran exactly where it should (its ``x-ratelimit-*`` headers).
"""

from __future__ import annotations

import json
import struct
import urllib.request
from collections.abc import Sequence

import grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from bench.payloads import EXPECTED_USER, USER_ID

RATE_LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
TIMEOUT = 10.0

Metadata = tuple[tuple[str, str], ...]


class VerificationError(Exception):
    """A path did not answer as it must; timing it would measure the wrong thing."""


def check_get_user(address: str, metadata: Metadata, rate_limited: bool | None) -> None:
    """``GetUser(101)`` at ``address`` must return Atul, premium.

    ``rate_limited``: True, the reply must carry ``x-ratelimit-*`` headers; False, it must not;
    None, not checked (the yardstick's limiter sends no headers).
    """
    with grpc.insecure_channel(address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        try:
            reply, call = stub.GetUser.with_call(
                users_pb2.GetUserRequest(user_id=USER_ID), metadata=metadata, timeout=TIMEOUT
            )
        except grpc.RpcError as error:
            raise VerificationError(
                f"GetUser({USER_ID}) at {address} failed: {error.code().name} {error.details()}"
            ) from None
        headers = dict(call.initial_metadata())
    if reply != EXPECTED_USER:
        raise VerificationError(f"GetUser({USER_ID}) at {address} returned {reply!r}, not {EXPECTED_USER!r}")
    present = [name for name in RATE_LIMIT_HEADERS if name in headers]
    if rate_limited is True and len(present) != len(RATE_LIMIT_HEADERS):
        raise VerificationError(
            f"GetUser at {address} came back without {', '.join(RATE_LIMIT_HEADERS)}: "
            "the rate limiter did not run"
        )
    if rate_limited is False and present:
        raise VerificationError(
            f"GetUser at {address} carries {present}: a rate limiter ran where none should"
        )


def check_auth_required(address: str) -> None:
    """A call without ``x-api-key`` must be refused with UNAUTHENTICATED: the key check runs."""
    with grpc.insecure_channel(address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        try:
            stub.GetUser(users_pb2.GetUserRequest(user_id=USER_ID), timeout=TIMEOUT)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return
            raise VerificationError(
                f"GetUser without a key at {address}: {error.code().name}, not UNAUTHENTICATED"
            ) from None
    raise VerificationError(f"GetUser without a key at {address} succeeded: no key check ran")


def check_list_users(address: str, metadata: Metadata, expected: Sequence[users_pb2.User]) -> None:
    """``ListUsers()`` at ``address`` must stream exactly ``expected``, in order."""
    with grpc.insecure_channel(address) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        try:
            received = list(stub.ListUsers(users_pb2.ListUsersRequest(), metadata=metadata, timeout=TIMEOUT))
        except grpc.RpcError as error:
            raise VerificationError(
                f"ListUsers at {address} failed: {error.code().name} {error.details()}"
            ) from None
    if received != list(expected):
        raise VerificationError(
            f"ListUsers at {address} streamed {len(received)} users, not the {len(expected)} expected"
        )


def check_http_get_user(url: str, headers: tuple[tuple[str, str], ...]) -> int:
    """GET ``url`` once: it must be user 101 as JSON. The reply body's size, for the load runs to check.

    Raises:
        VerificationError: another status or another body.
    """
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            body: bytes = reply.read()
    except OSError as error:
        raise VerificationError(f"GET {url}: {error}") from None
    expected = {"user_id": 101, "name": "Atul", "segment": "premium"}
    if json.loads(body) != expected:
        raise VerificationError(f"GET {url}: {body!r}, not {expected}")
    return len(body)


def check_grpc_web_get_user(url: str, headers: tuple[tuple[str, str], ...], body: bytes) -> int:
    """POST ``body`` (GetUser(101) framed) to ``url`` as gRPC-Web once: it must be one message, Atul, then
    the trailers with grpc-status 0. The reply body's size, for the load runs to check.

    Raises:
        VerificationError: another HTTP status, message or gRPC status.
    """
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            data: bytes = reply.read()
    except OSError as error:
        raise VerificationError(f"POST {url}: {error}") from None
    frames = []
    offset = 0
    while offset + 5 <= len(data):
        flag, length = struct.unpack_from(">BI", data, offset)
        frames.append((flag, data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    expected = [(0, EXPECTED_USER.SerializeToString()), (0x80, b"grpc-status: 0\r\n")]
    if frames != expected or offset != len(data):
        raise VerificationError(f"gRPC-Web POST {url}: {data!r}, not {expected}")
    return len(data)
