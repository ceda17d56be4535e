"""What the interceptors learn about a call, handed on to the handler through context variables.

Interceptors see no ServicerContext; a context variable set in one is visible in the handler
of the same call, and every call runs in its own task, so values never leak between calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]
# What an interceptor calls to get the next handler, and what a handler runs per call.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

# The verified client name, set by the auth interceptor.
client_name: ContextVar[str] = ContextVar("client_name", default="")

# The call's x-request-id (the caller's, or one made up), set by the observing interceptor.
request_id: ContextVar[str] = ContextVar("request_id", default="")

# Metadata the gateway adds to the reply's initial metadata (e.g. x-ratelimit-*), set before forwarding.
reply_headers: ContextVar[Metadata] = ContextVar("reply_headers", default=())
