"""shop.recommendations.v1.RecommendationService through the generated stubs: all three call kinds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from shop.recommendations.v1 import recommendations_pb2

if TYPE_CHECKING:
    from shop.recommendations.v1.recommendations_pb2_grpc import RecommendationServiceAsyncStub

PRODUCTS = {
    101: ["shirt", "jeans", "watch"],
    102: ["dress", "shoes", "handbag"],
    103: ["T-shirt", "jeans", "shoes"],
    104: ["Jackets", "Bracelet", "Shorts"],
}


def ask(user_id: int) -> recommendations_pb2.GetRecommendationsRequest:
    return recommendations_pb2.GetRecommendationsRequest(user_id=user_id)


def answer(user_id: int) -> recommendations_pb2.Recommendations:
    return recommendations_pb2.Recommendations(user_id=user_id, recommendations=PRODUCTS[user_id])


@pytest.mark.parametrize("user_id", sorted(PRODUCTS))
async def test_get_recommendations(recommendations: RecommendationServiceAsyncStub, user_id: int) -> None:
    assert await recommendations.GetRecommendations(ask(user_id), timeout=5) == answer(user_id)


async def test_get_recommendations_of_unknown_user_is_not_found(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await recommendations.GetRecommendations(ask(999), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no recommendations for user 999"


async def test_get_recommendations_with_non_positive_id_is_invalid(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await recommendations.GetRecommendations(ask(0), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "user_id must be a positive integer, got 0"


async def test_recommend_for_group_merges_in_first_seen_order(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    reply = await recommendations.RecommendForGroup(iter([ask(101), ask(103), ask(101), ask(102)]), timeout=5)
    assert list(reply.user_ids) == [101, 103, 102]
    assert list(reply.recommendations) == ["shirt", "jeans", "watch", "T-shirt", "shoes", "dress", "handbag"]


async def test_recommend_for_group_of_one(recommendations: RecommendationServiceAsyncStub) -> None:
    reply = await recommendations.RecommendForGroup(iter([ask(104)]), timeout=5)
    assert list(reply.user_ids) == [104]
    assert list(reply.recommendations) == PRODUCTS[104]


async def test_recommend_for_group_with_unknown_user_is_not_found(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await recommendations.RecommendForGroup(iter([ask(101), ask(999), ask(102)]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no recommendations for user 999"


async def test_recommend_for_empty_group_is_invalid(recommendations: RecommendationServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await recommendations.RecommendForGroup(iter([]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "send at least one user_id"


async def test_recommend_for_group_with_non_positive_id_is_invalid(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await recommendations.RecommendForGroup(iter([ask(101), ask(-1)]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "user_id must be a positive integer, got -1"


async def test_stream_recommendations_answers_each_request_as_it_arrives(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    call = recommendations.StreamRecommendations(timeout=5)
    # Each reply is read before the next request is sent: a server that waited for the end of
    # the request stream would block this test.
    for user_id in (102, 101, 102):
        await call.write(ask(user_id))
        assert await call.read() == answer(user_id)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_recommendations_ends_with_not_found_at_unknown_user(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    call = recommendations.StreamRecommendations(timeout=5)
    await call.write(ask(103))
    assert await call.read() == answer(103)
    await call.write(ask(999))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no recommendations for user 999"


async def test_stream_recommendations_with_non_positive_id_is_invalid(
    recommendations: RecommendationServiceAsyncStub,
) -> None:
    call = recommendations.StreamRecommendations(iter([ask(0)]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "user_id must be a positive integer, got 0"
