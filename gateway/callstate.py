"""What the interceptors learn about a call, handed on to the handler through context variables.

Interceptors see no ServicerContext; a context variable set in one is visible in the handler
of the same call, and every call runs in its own task, so values never leak between calls.
"""

from __future__ import annotations

from contextvars import ContextVar

Metadata = tuple[tuple[str, str | bytes], ...]

# The verified client name, set by the auth interceptor.
client_name: ContextVar[str] = ContextVar("client_name", default="")

# The call's x-request-id (the caller's, or one made up), set by the observing interceptor.
request_id: ContextVar[str] = ContextVar("request_id", default="")

# Metadata the gateway adds to the reply's initial metadata (e.g. x-ratelimit-*), set before forwarding.
reply_headers: ContextVar[Metadata] = ContextVar("reply_headers", default=())
