"""The aio engine's one interceptor, the switchboard: every call meets the current handler table.

grpc fixes a server's interceptors and handlers when it is built. So the server gets one
interceptor, which hands each call the handler of its path from the table current when it
arrives. A reload builds a new table and swaps it in with one assignment; a call already in
flight keeps the handler it was given, so it finishes under the configuration it started with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.call.chain import Chain, MethodChain
from gateway.call.step import Call
from gateway.engines.aio.admission import Admission, Serve, serving
from gateway.engines.aio.forwarding import Forwarder
from gateway.ops.own_services import REFLECTION_PATHS, OwnServices
from gateway.plan import Plan
from gateway.routing.health import Upstreams
from gateway.routing.table import MethodRoute

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _forwarding_handler(forwarder: Forwarder, admission: Admission) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind: grpc.aio serves a unary method as a stream-stream one at a
    higher CPU cost per call."""
    route = forwarder.route
    serve: Serve = forwarder.streamed_reply if route.server_streaming else forwarder.unary_reply
    behavior = admission.wrap(serve)
    if route.client_streaming and route.server_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior)
    if route.client_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior)
    if route.server_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior)
    return grpc.unary_unary_rpc_method_handler(behavior)


async def _never_served(request: Any, context: grpc.aio.ServicerContext, facts: Call) -> None:
    raise RuntimeError(f"the chain let an unrouted call to {facts.method} through")


class HandlerTable:
    """The handler of every path under one plan: forwarding, the gateway's own services, or a refusal."""

    def __init__(self, plan: Plan, upstreams: Upstreams, own: OwnServices) -> None:
        chain = plan.chain
        self._own_services = own
        self._chain: Chain = chain
        self.upstreams = upstreams
        routes = plan.routes.methods
        # Client streams go upstream on grpc's blocking API (see gateway/routing/threaded.py).
        self._blocking = None
        if any(route.client_streaming for route in routes.values()):
            self._blocking = plan.open_upstreams(blocking=True)
        self._routed = {
            path: _forwarding_handler(
                self._forwarder(route, chain.methods[path]),
                Admission(chain.methods[path], path, route.client_streaming),
            )
            for path, route in routes.items()
        }
        self._own = frozenset(plan.own)
        self._own_handlers: dict[str, grpc.RpcMethodHandler] = {}

    def _forwarder(self, route: MethodRoute, chain: MethodChain) -> Forwarder:
        if route.client_streaming and self._blocking is not None:
            return Forwarder(route, self._blocking.channel(route.upstream), chain, blocking=True)
        return Forwarder(route, self.upstreams.channel(route.upstream), chain)

    async def close(self) -> None:
        """Close the table's channels (once the calls on them have had time to end)."""
        await self.upstreams.close()
        if self._blocking is not None:
            await self._blocking.close()

    async def handler(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        path: str = details.method
        handler = self._routed.get(path)
        if handler is not None:
            return handler
        if path in self._own:
            return await self._own_handler(continuation, details, path)
        # Made per call: a caller must not be able to fill a cache by inventing paths.
        admission = Admission(self._chain.unrouted, path, requests_stream=True)
        return grpc.stream_stream_rpc_method_handler(admission.wrap(_never_served))

    async def _own_handler(
        self, continuation: Continuation, details: grpc.HandlerCallDetails, path: str
    ) -> grpc.RpcMethodHandler | None:
        handler = self._own_handlers.get(path)
        if handler is None:
            registered = await continuation(details)
            if registered is None:
                return None
            serve, requests_stream, replies_stream = serving(registered)
            if path in REFLECTION_PATHS:  # by the client the chain found, not the caller's metadata
                serve = self._own_services.serve_reflection
            kind = (
                ("stream" if requests_stream else "unary") + "_" + ("stream" if replies_stream else "unary")
            )
            behavior = Admission(self._chain.methods[path], path, requests_stream).wrap(serve)
            handler = self._own_handlers[path] = registered._replace(**{kind: behavior})
        return handler


class Switchboard(grpc.aio.ServerInterceptor):
    """The server's only interceptor: the handler of each call's path, from the current table."""

    def __init__(self, table: HandlerTable) -> None:
        self.table = table

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler: grpc.RpcMethodHandler | None = await self.table.handler(continuation, handler_call_details)
        return handler
