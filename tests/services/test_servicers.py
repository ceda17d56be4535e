"""The two services' servicers in-process, driven by grpc_testing: every RPC kind, codes and details.

Beside the black-box tests of tests/services/, which call the services as real processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc
import grpc_testing  # type: ignore[import-untyped]
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from shop.recommendations.v1 import recommendations_pb2
from shop.users.v1 import users_pb2

from services.data import load
from services.recommendations.servicer import RecommendationServiceServicer
from services.users.servicer import UserServiceServicer

USERS: ServiceDescriptor = users_pb2.DESCRIPTOR.services_by_name["UserService"]
RECOMMENDATIONS: ServiceDescriptor = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"]
# Long enough never to be reached by a servicer that answers; a hung call ends as DEADLINE_EXCEEDED.
TIMEOUT = 5.0

PEOPLE = {
    101: ("Atul", "premium"),
    102: ("Anagha", "luxury"),
    103: ("Aman", "premium"),
    104: ("Sean", "ultra luxury"),
}
PRODUCTS = {
    101: ["shirt", "jeans", "watch"],
    102: ["dress", "shoes", "handbag"],
    103: ["T-shirt", "jeans", "shoes"],
    104: ["Jackets", "Bracelet", "Shorts"],
}
NOT_POSITIVE = [0, -1, -(2**31)]

# A servicer method as grpc_testing calls it: (request or request iterator, context) → reply or replies.
BlockingMethod = Callable[[Any, Any], Any]


# grpc_testing calls a servicer's methods as plain functions on a thread of its own and reads their result
# as a message or an iterator of messages; the services' servicers are grpc.aio's, whose methods are
# coroutines and async generators taking an async request iterator and awaiting context.abort(). Given
# one as it is, grpc_testing answers OK with a coroutine object for a unary reply and UNKNOWN for a stream.
# So each method is adapted, unchanged, to the calling convention grpc_testing has: its coroutine or
# async generator runs on an event loop of the call's own thread.


class Aborted(Exception):
    """What a servicer's ``await context.abort()`` raises here, as grpc.aio's AbortError does there."""


class _AioContext:
    """grpc_testing's context as the servicers use grpc.aio's: ``await context.abort(code, details)``."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        try:
            # grpc_testing's abort() ends the call with code and details, then raises a bare Exception.
            self._context.abort(code, details)
        except Exception as error:
            raise Aborted(details) from error
        raise AssertionError("grpc_testing's ServicerContext.abort() returned")


def _not_aborted(record: logging.LogRecord) -> bool:
    return record.exc_info is None or not isinstance(record.exc_info[1], Aborted)


# grpc_testing logs the exception a method ends with as "Exception calling application!", an abort's too
# (from the call's thread, often after the test has its status); grpc.aio logs none for an abort. Only
# aborts are left out: any other exception a servicer raises is still logged.
logging.getLogger("grpc_testing._server._rpc").addFilter(_not_aborted)


async def _each(requests: Iterator[Message]) -> AsyncIterator[Message]:
    # Blocks the call's own loop, which runs nothing else, until the test sends a request or closes.
    for request in requests:
        yield request


async def _next(replies: AsyncIterator[Message]) -> Message | None:
    try:
        return await anext(replies)
    except StopAsyncIteration:
        return None


def _replies(replies: AsyncIterator[Message]) -> Iterator[Message]:
    with asyncio.Runner() as runner:
        while (reply := runner.run(_next(replies))) is not None:
            yield reply


def _blocking(method: MethodDescriptor, handler: Any) -> BlockingMethod:
    def call(request: Any, context: Any) -> Any:
        argument = _each(request) if method.client_streaming else request
        result = handler(argument, _AioContext(context))
        return _replies(result) if method.server_streaming else asyncio.run(result)

    return call


class Blocking:
    """A grpc.aio servicer of ``service`` whose methods grpc_testing can call."""

    def __init__(self, servicer: object, service: ServiceDescriptor) -> None:
        self._methods = {
            method.name: _blocking(method, getattr(servicer, method.name)) for method in service.methods
        }

    def __getattr__(self, name: str) -> BlockingMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(name) from None


def serve(service: ServiceDescriptor, servicer: object) -> Any:
    """A grpc_testing server of ``servicer``."""
    return grpc_testing.server_from_dictionary(
        {service: Blocking(servicer, service)}, grpc_testing.strict_real_time()
    )


@pytest.fixture
def user_server() -> Any:
    """The user servicer on the reference data, as the user service builds it."""
    return serve(USERS, UserServiceServicer(load().users))


@pytest.fixture
def recommendation_server() -> Any:
    """The recommendation servicer on the reference data, as the recommendation service builds it."""
    return serve(RECOMMENDATIONS, RecommendationServiceServicer(load().recommendations))


def user(user_id: int) -> users_pb2.User:
    name, segment = PEOPLE[user_id]
    return users_pb2.User(user_id=user_id, name=name, segment=segment)


def ask(user_id: int) -> recommendations_pb2.GetRecommendationsRequest:
    return recommendations_pb2.GetRecommendationsRequest(user_id=user_id)


def answer(user_id: int) -> recommendations_pb2.Recommendations:
    return recommendations_pb2.Recommendations(user_id=user_id, recommendations=PRODUCTS[user_id])


def get_user(server: Any, user_id: int) -> tuple[Any, grpc.StatusCode, str]:
    """GetUser(user_id): (reply, code, details)."""
    method = USERS.methods_by_name["GetUser"]
    rpc = server.invoke_unary_unary(method, (), users_pb2.GetUserRequest(user_id=user_id), TIMEOUT)
    reply, _, code, details = rpc.termination()
    return reply, code, details


def get_recommendations(server: Any, user_id: int) -> tuple[Any, grpc.StatusCode, str]:
    """GetRecommendations(user_id): (reply, code, details)."""
    method = RECOMMENDATIONS.methods_by_name["GetRecommendations"]
    rpc = server.invoke_unary_unary(method, (), ask(user_id), TIMEOUT)
    reply, _, code, details = rpc.termination()
    return reply, code, details


def recommend_for_group(server: Any, user_ids: list[int]) -> tuple[Any, grpc.StatusCode, str]:
    """RecommendForGroup with one request per id, then the end of the stream: (reply, code, details)."""
    rpc = server.invoke_stream_unary(RECOMMENDATIONS.methods_by_name["RecommendForGroup"], (), TIMEOUT)
    for user_id in user_ids:
        rpc.send_request(ask(user_id))
    rpc.requests_closed()
    reply, _, code, details = rpc.termination()
    return reply, code, details


def ended_stream(rpc: Any) -> tuple[list[Any], grpc.StatusCode, str]:
    """The replies of a server stream that has ended, its code and details."""
    _, code, details = rpc.termination()
    replies = []
    while True:
        try:
            replies.append(rpc.take_response())
        except ValueError:  # grpc_testing's "No more responses!" once the call has ended
            return replies, code, details


# UserService.GetUser (unary-unary)


@pytest.mark.parametrize("user_id", sorted(PEOPLE))
def test_get_user(user_server: Any, user_id: int) -> None:
    reply, code, details = get_user(user_server, user_id)
    assert code == grpc.StatusCode.OK
    assert details == ""
    assert reply == user(user_id)


def test_get_unknown_user_is_not_found(user_server: Any) -> None:
    reply, code, details = get_user(user_server, 999)
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "user 999 not found"
    assert reply is None


@pytest.mark.parametrize("user_id", NOT_POSITIVE)
def test_get_user_with_non_positive_id_is_invalid(user_server: Any, user_id: int) -> None:
    reply, code, details = get_user(user_server, user_id)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"user_id must be a positive integer, got {user_id}"
    assert reply is None


# UserService.ListUsers (unary-stream)


@pytest.mark.parametrize(
    ("segment", "user_ids"),
    [("", [101, 102, 103, 104]), ("premium", [101, 103]), ("ultra luxury", [104]), ("Premium", [])],
)
def test_list_users(user_server: Any, segment: str, user_ids: list[int]) -> None:
    rpc = user_server.invoke_unary_stream(
        USERS.methods_by_name["ListUsers"], (), users_pb2.ListUsersRequest(segment=segment), TIMEOUT
    )
    replies, code, details = ended_stream(rpc)
    assert (code, details) == (grpc.StatusCode.OK, "")
    assert replies == [user(user_id) for user_id in user_ids]


# RecommendationService.GetRecommendations (unary-unary)


@pytest.mark.parametrize("user_id", sorted(PRODUCTS))
def test_get_recommendations(recommendation_server: Any, user_id: int) -> None:
    reply, code, details = get_recommendations(recommendation_server, user_id)
    assert (code, details) == (grpc.StatusCode.OK, "")
    assert reply.user_id == user_id
    assert list(reply.recommendations) == PRODUCTS[user_id]


def test_get_recommendations_of_unknown_user_is_not_found(recommendation_server: Any) -> None:
    reply, code, details = get_recommendations(recommendation_server, 999)
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "no recommendations for user 999"
    assert reply is None


@pytest.mark.parametrize("user_id", NOT_POSITIVE)
def test_get_recommendations_with_non_positive_id_is_invalid(
    recommendation_server: Any, user_id: int
) -> None:
    reply, code, details = get_recommendations(recommendation_server, user_id)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"user_id must be a positive integer, got {user_id}"
    assert reply is None


# RecommendationService.RecommendForGroup (stream-unary)


def test_recommend_for_group_merges_in_first_seen_order(recommendation_server: Any) -> None:
    reply, code, details = recommend_for_group(recommendation_server, [101, 103, 101, 102])
    assert (code, details) == (grpc.StatusCode.OK, "")
    assert list(reply.user_ids) == [101, 103, 102]
    assert list(reply.recommendations) == ["shirt", "jeans", "watch", "T-shirt", "shoes", "dress", "handbag"]


def test_recommend_for_one_user(recommendation_server: Any) -> None:
    reply, code, _ = recommend_for_group(recommendation_server, [104])
    assert code == grpc.StatusCode.OK
    assert reply == recommendations_pb2.GroupRecommendations(user_ids=[104], recommendations=PRODUCTS[104])


def test_recommend_for_empty_group_is_invalid(recommendation_server: Any) -> None:
    reply, code, details = recommend_for_group(recommendation_server, [])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "send at least one user_id"
    assert reply is None


def test_recommend_for_group_with_unknown_user_is_not_found(recommendation_server: Any) -> None:
    reply, code, details = recommend_for_group(recommendation_server, [101, 999, 102])
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "no recommendations for user 999"
    assert reply is None


def test_recommend_for_group_with_non_positive_id_is_invalid(recommendation_server: Any) -> None:
    reply, code, details = recommend_for_group(recommendation_server, [101, -7])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "user_id must be a positive integer, got -7"
    assert reply is None


# RecommendationService.StreamRecommendations (stream-stream)


def test_stream_recommendations_answers_each_request_as_it_arrives(recommendation_server: Any) -> None:
    rpc = recommendation_server.invoke_stream_stream(
        RECOMMENDATIONS.methods_by_name["StreamRecommendations"], (), TIMEOUT
    )
    # Each reply is taken before the next request is sent: the servicer does not wait for the stream's end.
    for user_id in [103, 101, 103, 104, 102]:
        rpc.send_request(ask(user_id))
        assert rpc.take_response() == answer(user_id)
    rpc.requests_closed()
    assert ended_stream(rpc) == ([], grpc.StatusCode.OK, "")


def test_stream_recommendations_of_no_requests_is_empty(recommendation_server: Any) -> None:
    rpc = recommendation_server.invoke_stream_stream(
        RECOMMENDATIONS.methods_by_name["StreamRecommendations"], (), TIMEOUT
    )
    rpc.requests_closed()
    assert ended_stream(rpc) == ([], grpc.StatusCode.OK, "")


def test_stream_recommendations_ends_not_found_at_unknown_user(recommendation_server: Any) -> None:
    rpc = recommendation_server.invoke_stream_stream(
        RECOMMENDATIONS.methods_by_name["StreamRecommendations"], (), TIMEOUT
    )
    for user_id in [102, 999, 101]:
        rpc.send_request(ask(user_id))
    rpc.requests_closed()
    replies, code, details = ended_stream(rpc)
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "no recommendations for user 999"
    assert replies == [answer(102)]


def test_stream_recommendations_ends_invalid_at_non_positive_id(recommendation_server: Any) -> None:
    rpc = recommendation_server.invoke_stream_stream(
        RECOMMENDATIONS.methods_by_name["StreamRecommendations"], (), TIMEOUT
    )
    rpc.send_request(ask(101))
    assert rpc.take_response() == answer(101)
    rpc.send_request(ask(0))
    replies, code, details = ended_stream(rpc)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "user_id must be a positive integer, got 0"
    assert replies == []
