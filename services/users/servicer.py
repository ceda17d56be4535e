"""shop.users.v1.UserService over an in-memory list of users."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from services.data import User
from services.status import abort, require_positive_user_id

SERVICE_NAME: str = users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name


class UserServiceServicer(users_pb2_grpc.UserServiceServicer):
    """Answers from a fixed set of users; the set never changes while serving."""

    def __init__(self, users: Iterable[User]) -> None:
        # Built in ascending id order, which is the order ListUsers promises.
        self._users = {
            user.user_id: users_pb2.User(user_id=user.user_id, name=user.name, segment=user.segment)
            for user in sorted(users, key=lambda user: user.user_id)
        }

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.User:
        """The user with ``request.user_id``; NOT_FOUND if unknown, INVALID_ARGUMENT if not positive."""
        await require_positive_user_id(request.user_id, context)
        user = self._users.get(request.user_id)
        if user is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user {request.user_id} not found")
        return user

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[users_pb2.User]:
        """Every user, or those whose segment equals ``request.segment`` exactly, by ascending id."""
        for user in self._users.values():
            if not request.segment or user.segment == request.segment:
                yield user
