"""``user-service`` / ``python -m services.users``: serve shop.users.v1.UserService."""

from __future__ import annotations

import sys

import grpc
from shop.users.v1 import users_pb2_grpc

from services import bootstrap, data
from services.users.servicer import SERVICE_NAME, UserServiceServicer


def _register(dataset: data.DataSet, server: grpc.aio.Server) -> None:
    users_pb2_grpc.add_UserServiceServicer_to_server(UserServiceServicer(dataset.users), server)


SERVICE = bootstrap.Service(
    prog="user-service",
    description="Serve shop.users.v1.UserService from a JSON data set.",
    default_listen="127.0.0.1:50051",
    service_name=SERVICE_NAME,
    register=_register,
)


def main() -> int:
    """Console script entry point; returns the exit status."""
    return bootstrap.main(SERVICE)


if __name__ == "__main__":
    sys.exit(main())
