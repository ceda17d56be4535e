"""Watching calls end: a handler wrapper that reports each call's outcome, and the services' call log.

``observe`` wraps a method handler so that a function runs when each call ends, with the call's
context, start time and the exception it ended with, if any; ``final_code`` turns that into the
status the client saw. The services' ``CallLogInterceptor`` writes one JSON line per call from
it; the gateway's metrics and access log (gateway/observe.py) are built on the same wrapper.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("calls")

# The metadata key that carries a call's id from hop to hop (set by the gateway).
REQUEST_ID_HEADER = "x-request-id"
HEALTH_PREFIX = "/grpc.health.v1.Health/"

# Called when a call ends: its context, what ``start`` returned when it began, and its exception.
Finish = Callable[[grpc.aio.ServicerContext, float, BaseException | None], None]

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, seen from inside its handler once the handler is done."""
    # grpc.aio abandons a response generator (GeneratorExit at its yield) only when the call ends
    # under it: cancelled by the client, or the server stopped, while a response was being sent.
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


def observe(
    handler: grpc.RpcMethodHandler, start: Callable[[], float], finish: Finish
) -> grpc.RpcMethodHandler:
    """``handler`` with ``start()`` run as each call begins and ``finish`` as it ends, however it ends."""
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return handler._replace(**{kind: _observed(behavior, start, finish)})
    return handler


def _observed(behavior: Callable[..., Any], start: Callable[[], float], finish: Finish) -> Callable[..., Any]:
    # Keep the behaviour's own shape: grpc.aio treats async generators and coroutines differently.
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = start()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, started, error)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = start()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(context, started, error)

    return unary


class CallLogInterceptor(grpc.aio.ServerInterceptor):
    """Logs every call the server handles, after it ends, at INFO on the ``calls`` logger.

    The line carries the ``x-request-id`` the call came with (null without one), so that a
    call through the gateway can be found in the gateway's access log and here alike.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        request_id = next(
            (v for k, v in handler_call_details.invocation_metadata or () if k == REQUEST_ID_HEADER), None
        )

        # Health checks come every few seconds from load balancers and gateways: debug, not info,
        # so that the calls a person makes stand out.
        level = logging.DEBUG if method.startswith(HEALTH_PREFIX) else logging.INFO

        def write(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
            log.log(
                level,
                "call",
                extra={
                    "method": method,
                    "code": final_code(context, error).name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "request_id": request_id,
                },
            )

        return observe(handler, time.perf_counter, write)
