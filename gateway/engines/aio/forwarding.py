"""Transparent forwarding on grpc.aio: raw bytes in and out, one forwarder per routed method.

The forwarder never decodes a message. It carries the caller's deadline, cancellation and
metadata (as gateway/call/metadata.py says) to the upstream, and the upstream's initial metadata,
messages, trailing metadata and status back, untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from gateway.call.chain import MethodChain
from gateway.call.lifecycle import upstream
from gateway.call.replies import reply_headers, unavailable_message
from gateway.call.step import Call, Metadata
from gateway.routing.table import MethodRoute
from gateway.routing.threaded import ThreadedStreamCall


async def _counted(requests: AsyncIterable[bytes], facts: Call) -> AsyncIterator[bytes]:
    async for request in requests:
        facts.received += 1
        yield request


class Forwarder:
    """Forwards the calls of one method; built once per configuration."""

    def __init__(self, route: MethodRoute, channel: Any, chain: MethodChain, blocking: bool = False) -> None:
        """``chain``: the method's; ``blocking``: ``channel`` is of grpc's blocking API, and calls go
        out from a thread each (client streams: see gateway/routing/threaded.py)."""
        self.route = route
        self._chain = chain
        # No serializers: requests and replies stay raw bytes.
        multicallable = getattr(channel, route.kind)(
            route.path, request_serializer=None, response_deserializer=None
        )
        self._call: Any = multicallable
        if blocking:

            def threaded(requests: Any, timeout: float | None, metadata: Metadata) -> ThreadedStreamCall:
                return ThreadedStreamCall(multicallable, requests, timeout, metadata, route.server_streaming)

            self._call = threaded
        self._default_timeout = route.default_timeout

    def _start(self, request: Any, context: grpc.aio.ServicerContext, facts: Call) -> Any:
        if self.route.client_streaming:
            request = _counted(request, facts)
        metadata, timeout = upstream(self._chain, facts, context.time_remaining(), self._default_timeout)
        return self._call(request, timeout=timeout, metadata=metadata)

    async def unary_reply(self, request: Any, context: grpc.aio.ServicerContext, facts: Call) -> bytes:
        call = self._start(request, context, facts)
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as error:
            await self._fail(context, facts, error, headers_sent=False)
            raise
        finally:
            if not call.done():
                call.cancel()
        await context.send_initial_metadata(reply_headers(await call.initial_metadata(), facts))
        context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        return reply

    async def streamed_reply(self, request: Any, context: grpc.aio.ServicerContext, facts: Call) -> None:
        call = self._start(request, context, facts)
        headers_sent = False
        try:
            # Awaiting initial metadata alone does not carry a cancel upstream: the finally does.
            await context.send_initial_metadata(reply_headers(await call.initial_metadata(), facts))
            headers_sent = True
            async for reply in call:
                await context.write(reply)
                facts.sent += 1
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as error:
            await self._fail(context, facts, error, headers_sent=headers_sent)
        finally:
            if not call.done():
                call.cancel()

    async def _fail(
        self, context: grpc.aio.ServicerContext, facts: Call, error: grpc.aio.AioRpcError, headers_sent: bool
    ) -> None:
        details = error.details() or ""
        route = self.route
        trailers: Metadata = tuple(error.trailing_metadata() or ())
        unavailable = unavailable_message(route.upstream, route.service, error.code(), details, trailers)
        if unavailable is not None:
            if not headers_sent:
                await context.send_initial_metadata(reply_headers(None, facts))
            await context.abort(grpc.StatusCode.UNAVAILABLE, unavailable)
        if not headers_sent:
            await context.send_initial_metadata(reply_headers(error.initial_metadata(), facts))
        # Code and details unchanged, trailers (and grpc-status-details-bin in them) as they came.
        await context.abort(error.code(), details, trailers)
