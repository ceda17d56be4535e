"""shop.recommendations.v1.RecommendationService over an in-memory table of recommendations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc

from services.status import abort, require_positive_user_id

SERVICE_NAME: str = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name


class RecommendationServiceServicer(recommendations_pb2_grpc.RecommendationServiceServicer):
    """Answers from a fixed table of product names by user id; the table never changes while serving."""

    def __init__(self, recommendations: Mapping[int, Sequence[str]]) -> None:
        self._products = {user_id: tuple(products) for user_id, products in recommendations.items()}

    async def _products_of(self, user_id: int, context: grpc.aio.ServicerContext) -> tuple[str, ...]:
        await require_positive_user_id(user_id, context)
        products = self._products.get(user_id)
        if products is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no recommendations for user {user_id}")
        return products

    async def GetRecommendations(
        self, request: recommendations_pb2.GetRecommendationsRequest, context: grpc.aio.ServicerContext
    ) -> recommendations_pb2.Recommendations:
        """The products of one user; NOT_FOUND if there are none, INVALID_ARGUMENT for an id <= 0."""
        products = await self._products_of(request.user_id, context)
        return recommendations_pb2.Recommendations(user_id=request.user_id, recommendations=products)

    async def RecommendForGroup(
        self,
        request_iterator: AsyncIterator[recommendations_pb2.GetRecommendationsRequest],
        context: grpc.aio.ServicerContext,
    ) -> recommendations_pb2.GroupRecommendations:
        """The merged products of every streamed user, each user and product once, in first-seen order.

        Ends with NOT_FOUND at the first unknown id, INVALID_ARGUMENT for an empty stream.
        """
        # dicts keep insertion order, so they de-duplicate while keeping first-seen order.
        user_ids: dict[int, None] = {}
        products: dict[str, None] = {}
        async for request in request_iterator:
            if request.user_id in user_ids:
                continue
            products.update(dict.fromkeys(await self._products_of(request.user_id, context)))
            user_ids[request.user_id] = None
        if not user_ids:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "send at least one user_id")
        return recommendations_pb2.GroupRecommendations(user_ids=user_ids, recommendations=products)

    async def StreamRecommendations(
        self,
        request_iterator: AsyncIterator[recommendations_pb2.GetRecommendationsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[recommendations_pb2.Recommendations]:
        """One reply per request, sent as soon as the request arrives; NOT_FOUND ends the stream."""
        async for request in request_iterator:
            products = await self._products_of(request.user_id, context)
            yield recommendations_pb2.Recommendations(user_id=request.user_id, recommendations=products)
