"""Ending a call with an error status, shared by the servicers."""

from __future__ import annotations

from typing import NoReturn

import grpc


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with ``code`` and ``details``; raises to unwind the handler."""
    await context.abort(code, details)
    # grpcio has no type hints, so the type checker cannot know that abort() always raises.
    raise AssertionError("ServicerContext.abort() returned")


async def require_positive_user_id(user_id: int, context: grpc.aio.ServicerContext) -> None:
    """End the call with INVALID_ARGUMENT unless ``user_id`` is positive."""
    if user_id <= 0:
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, f"user_id must be a positive integer, got {user_id}"
        )
