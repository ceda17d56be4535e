"""``recommendation-service`` / ``python -m services.recommendations``: serve RecommendationService."""

from __future__ import annotations

import sys

import grpc
from shop.recommendations.v1 import recommendations_pb2_grpc

from services import bootstrap, data
from services.recommendations.servicer import SERVICE_NAME, RecommendationServiceServicer


def _register(dataset: data.DataSet, server: grpc.aio.Server) -> None:
    recommendations_pb2_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationServiceServicer(dataset.recommendations), server
    )


SERVICE = bootstrap.Service(
    prog="recommendation-service",
    description="Serve shop.recommendations.v1.RecommendationService from a JSON data set.",
    default_listen="127.0.0.1:50052",
    service_name=SERVICE_NAME,
    register=_register,
)


def main() -> int:
    """Console script entry point; returns the exit status."""
    return bootstrap.main(SERVICE)


if __name__ == "__main__":
    sys.exit(main())
