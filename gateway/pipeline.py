"""The per-configuration call path, swappable at run time (SIGHUP reload).

grpc fixes a server's interceptors and handlers when it is built. So the server gets one
interceptor, the switchboard, which hands every call to the current pipeline: the configured
interceptors in order, then the proxy table. A reload builds a new pipeline and swaps it in with
one assignment; a call already in flight keeps the handler it was given, so it finishes under
the configuration it started with.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gateway.callstate import Continuation
from gateway.proxy import ProxyTable


@dataclass(frozen=True)
class Pipeline:
    """Interceptors in policy order, then: a routed method's forwarding handler, the server's own
    handler for ``local`` methods (health, reflection), or the unrouted answer."""

    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    proxy: ProxyTable
    local: frozenset[str]

    async def handle(
        self, continuation: Continuation, details: grpc.HandlerCallDetails, index: int = 0
    ) -> grpc.RpcMethodHandler | None:
        if index < len(self.interceptors):

            async def rest(next_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return await self.handle(continuation, next_details, index + 1)

            return await self.interceptors[index].intercept_service(rest, details)
        handler = self.proxy.handler(details.method)
        if handler is not None:
            return handler
        if details.method in self.local:
            return await continuation(details)
        return self.proxy.unrouted(details.method)


class Switchboard(grpc.aio.ServerInterceptor):
    """The server's only interceptor: runs each call through the pipeline current when it arrives."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return await self.pipeline.handle(continuation, handler_call_details)
