"""Transparent forwarding: raw bytes in and out, one handler of the right kind per routed method.

The proxy never decodes a message. It carries the caller's deadline, cancellation and metadata
(minus credentials and hop-by-hop headers, plus the verified client name) to the upstream, and
the upstream's initial metadata, messages, trailing metadata and status back, untouched.
"""

from __future__ import annotations

from typing import Any

import grpc

from gateway import callstate
from gateway.callstate import Metadata
from gateway.rejections import rejection
from gateway.requestid import HEADER as REQUEST_ID_HEADER
from gateway.routes import MethodRoute, RouteTable
from gateway.upstreams import Upstreams

CLIENT_ID_HEADER = "x-client-id"
# A caller's deadline longer than this (30 days) is as good as none.
MAX_UPSTREAM_TIMEOUT = 30 * 24 * 3600.0
API_KEY_HEADER = "x-api-key"

# Never forwarded: the caller's credentials, a client id the caller may have forged, and
# headers that describe this hop's connection rather than the call. (x-request-id is added
# back: the caller's, or the one the gateway made up.)
_NOT_FORWARDED = frozenset(
    {
        API_KEY_HEADER,
        CLIENT_ID_HEADER,
        REQUEST_ID_HEADER,
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
        "user-agent",
        "content-type",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
    }
)

# grpc core's own words when no connection to an upstream could be made.
_CONNECTION_FAILURES = (
    "failed to connect",
    "connections to all backends failing",
    "connection refused",
    "socket closed",
    "connection reset",
)


def forwarded(metadata: Metadata | None, client: str, request_id: str) -> Metadata:
    """The caller's ``metadata`` as the upstream should see it."""
    kept = tuple(
        (key, value) for key, value in metadata or () if key not in _NOT_FORWARDED and not key.startswith(":")
    )
    return (*kept, (CLIENT_ID_HEADER, client), (REQUEST_ID_HEADER, request_id))


def forwarded_metadata(context: grpc.aio.ServicerContext) -> Metadata:
    """The caller's metadata as the upstream should see it."""
    return forwarded(context.invocation_metadata(), callstate.client_name.get(), callstate.request_id.get())


def unavailable_message(
    route: MethodRoute, code: grpc.StatusCode, details: str, trailers: Metadata | None
) -> str | None:
    """The gateway's words for a call that failed because no connection to the upstream could be
    made; None for any other failure, which is passed on as the upstream or grpc reported it."""
    if code != grpc.StatusCode.UNAVAILABLE or trailers:
        return None
    lowered = details.lower()
    if any(words in lowered for words in _CONNECTION_FAILURES):
        return f"upstream {route.upstream} for {route.service} is unavailable: {details}"
    return None


def unrouted_message(routes: RouteTable, path: str) -> str:
    """Why no route or local service takes a call to ``path`` (its status is UNIMPLEMENTED)."""
    service, _, method = path.lstrip("/").partition("/")
    if service in routes.upstream_of:
        known = ", ".join(sorted(routes.method_names(service)))
        return f"method {method} is not a method of {service} (it has: {known})"
    return f"service {service} is not routed by this gateway"


class _Forwarder:
    """Forwards the calls of one method; built once at start-up."""

    def __init__(self, route: MethodRoute, channel: grpc.aio.Channel) -> None:
        self.route = route
        kind = (
            ("stream" if route.client_streaming else "unary")
            + "_"
            + ("stream" if route.server_streaming else "unary")
        )
        # No serializers: requests and replies stay raw bytes.
        self._call = getattr(channel, kind)(route.path, request_serializer=None, response_deserializer=None)
        self._default_timeout = route.default_timeout

    def _timeout(self, context: grpc.aio.ServicerContext) -> float | None:
        """The caller's deadline, or the route's default_timeout when the caller set none."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self._default_timeout
        # grpc's client overflows on deadlines of centuries (grpc-timeout 2562047H) and fails at once.
        return min(remaining, MAX_UPSTREAM_TIMEOUT)

    async def unary_reply(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        call = self._call(request, timeout=self._timeout(context), metadata=forwarded_metadata(context))
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as error:
            await self._fail(context, error, headers_sent=False)
            raise
        finally:
            if not call.done():
                call.cancel()
        await self._send_headers(context, await call.initial_metadata())
        context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        return reply

    async def streamed_reply(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        call = self._call(request, timeout=self._timeout(context), metadata=forwarded_metadata(context))
        headers_sent = False
        try:
            # Awaiting initial metadata alone does not carry a cancel upstream: the finally does.
            await self._send_headers(context, await call.initial_metadata())
            headers_sent = True
            async for reply in call:
                await context.write(reply)
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as error:
            await self._fail(context, error, headers_sent=headers_sent)
        finally:
            if not call.done():
                call.cancel()

    @staticmethod
    async def _send_headers(context: grpc.aio.ServicerContext, upstream: Metadata | None) -> None:
        # Always some: the request id is returned to every caller whose call was forwarded.
        await context.send_initial_metadata(
            (
                *(upstream or ()),
                *callstate.reply_headers.get(),
                (REQUEST_ID_HEADER, callstate.request_id.get()),
            )
        )

    async def _fail(
        self, context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, headers_sent: bool
    ) -> None:
        details = error.details() or ""
        unavailable = unavailable_message(self.route, error.code(), details, error.trailing_metadata())
        if unavailable is not None:
            if not headers_sent:
                await self._send_headers(context, None)
            await context.abort(grpc.StatusCode.UNAVAILABLE, unavailable)
        if not headers_sent:
            await self._send_headers(context, error.initial_metadata())
        # Code and details unchanged, trailers (and grpc-status-details-bin in them) as they came.
        await context.abort(error.code(), details, tuple(error.trailing_metadata() or ()))


class ProxyTable:
    """The forwarding handler of every routed method, built once per configuration."""

    def __init__(self, routes: RouteTable, upstreams: Upstreams) -> None:
        self._routes = routes
        self._handlers = {
            path: _method_handler(_Forwarder(route, upstreams.channel(route.upstream)), route)
            for path, route in routes.methods.items()
        }

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(method)

    def unrouted(self, path: str) -> grpc.RpcMethodHandler:
        """The answer to a call that no route or local service takes, saying why."""
        return rejection(grpc.StatusCode.UNIMPLEMENTED, unrouted_message(self._routes, path))


def _method_handler(forwarder: _Forwarder, route: MethodRoute) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind: a stream-stream one for all costs about 1.8x the CPU."""
    if route.client_streaming and route.server_streaming:
        return grpc.stream_stream_rpc_method_handler(forwarder.streamed_reply)
    if route.client_streaming:
        return grpc.stream_unary_rpc_method_handler(forwarder.unary_reply)
    if route.server_streaming:
        return grpc.unary_stream_rpc_method_handler(forwarder.streamed_reply)
    return grpc.unary_unary_rpc_method_handler(forwarder.unary_reply)
