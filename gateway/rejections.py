"""Handlers that refuse a call with the gateway's own status, whatever the method's kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.requestid import reply_metadata


def rejection(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that ends every call at once with ``code`` and ``message``.

    It is stream-stream because that kind suits a method of any kind: a streaming client
    never waits for it to read a request (a unary-request handler would leave it hanging).
    """

    async def abort(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        # Like every reply of the gateway, a refusal carries the call's x-request-id.
        await context.send_initial_metadata(reply_metadata())
        await context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(abort)
