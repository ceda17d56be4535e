"""A server interceptor that writes one structured log line per call: method, status code, duration."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("calls")


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    # grpc.aio abandons a response generator (GeneratorExit at its yield) only when the call ends
    # under it: cancelled by the client, or the server stopped, while a response was being sent.
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


class CallLogInterceptor(grpc.aio.ServerInterceptor):
    """Logs every call the server handles, after it ends, at INFO on the ``calls`` logger."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_logged(method, handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_logged(method, handler.unary_stream))
        if handler.stream_unary:
            return handler._replace(stream_unary=_logged(method, handler.stream_unary))
        return handler._replace(stream_stream=_logged(method, handler.stream_stream))


def _write(
    method: str, context: grpc.aio.ServicerContext, started: float, error: BaseException | None
) -> None:
    code = _final_code(context, error)
    log.info(
        "call",
        extra={
            "method": method,
            "code": code.name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


def _logged(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                _write(method, context, started, error)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _write(method, context, started, error)

    return unary
