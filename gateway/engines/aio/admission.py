"""The aio engine's door: each call's facts from its servicer context, through the call's lifecycle.

A handler of the method's own kind wraps what serves the call (a forwarder, or the gateway's own
health and reflection): grpc.aio calls it with the request (or the request iterator) and the
context, which has the caller's address, so the chain decides here (gateway/call/lifecycle.py)
before the call is served. A refusal is an abort with the refusal's status, message and trailers,
after initial metadata with the request id.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from gateway.call.chain import MethodChain
from gateway.call.lifecycle import Pending, begin, decide, end
from gateway.call.replies import refusal_headers
from gateway.call.requestid import request_id_of
from gateway.call.step import Call
from runtime.calllog import final_code

# What serves an admitted call: (request or request iterator, context, the call's facts).
Serve = Callable[[Any, grpc.aio.ServicerContext, Call], Any]


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


class Admission:
    """The calls of one method (``path``): their facts, and the lifecycle around what serves them."""

    def __init__(self, chain: MethodChain, path: str, requests_stream: bool) -> None:
        self._chain = chain
        self._path = path
        self._requests_stream = requests_stream
        self._read_first = requests_stream and chain.reads_request

    def wrap(self, serve: Serve) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
        """``serve`` admitted and observed, as a grpc.aio behaviour (a coroutine for every kind).

        A refused call is aborted with the refusal's status, message and trailers, after initial
        metadata with the request id.
        """
        chain = self._chain
        request_type = chain.request_type
        path = self._path
        read_first = self._read_first
        unary_request = not self._requests_stream

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata() or ()
            facts = Call("grpc", path, metadata, context.peer, request_id_of(metadata), request_type)
            begin(chain, facts)
            error: BaseException | None = None
            try:
                if read_first:
                    iterator = aiter(request)
                    facts.first = await anext(iterator, None)
                    request = _prepend(facts.first, iterator)
                elif unary_request:
                    facts.first = request
                verdict = decide(chain, facts)
                if isinstance(verdict, Pending):
                    verdict = await verdict
                if verdict is not None:
                    await context.send_initial_metadata(refusal_headers(facts))
                    await context.abort(verdict.code, verdict.message, verdict.trailers)
                return await serve(request, context, facts)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(chain, facts, final_code(context, error))

        return behavior


def serving(handler: grpc.RpcMethodHandler) -> tuple[Serve, bool, bool]:
    """A registered handler's behaviour as a ``Serve``, and whether it streams requests, replies."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            break
    requests_stream, replies_stream = kind.startswith("stream"), kind.endswith("stream")
    if inspect.isasyncgenfunction(behavior):

        async def serve_generator(request: Any, context: grpc.aio.ServicerContext, facts: Call) -> None:
            async for reply in behavior(request, context):
                await context.write(reply)

        return serve_generator, requests_stream, replies_stream

    async def serve(request: Any, context: grpc.aio.ServicerContext, facts: Call) -> Any:
        return await behavior(request, context)

    return serve, requests_stream, replies_stream
