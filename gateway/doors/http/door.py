"""The HTTP/JSON door: an ASGI app that turns each HTTP request into a call through the same chain.

A door only translates: the request's route, headers, path, query and body become a Call and its
request message (by the method's descriptors); the chain decides, in the call's lifecycle
(gateway/call/lifecycle.py), the same as every door's; an admitted call is forwarded
upstream over gRPC; the reply, or the refusal, becomes HTTP: a status google.rpc.Code maps to, a
JSON body (a ``google.rpc.Status`` for errors), ``Grpc-Metadata-*`` headers for the upstream's
metadata. Server streaming replies are newline-delimited JSON, or Server-Sent Events when asked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf.descriptor_pool import DescriptorPool

from gateway.call.chain import Chain, MethodChain
from gateway.call.lifecycle import Pending, begin, decide, end, upstream
from gateway.call.replies import HTTP_STATUS, reply_headers, unavailable_message
from gateway.call.requestid import HEADER as REQUEST_ID_HEADER
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Metadata, Refusal
from gateway.doors.http.docs import asset, is_docs
from gateway.doors.http.request import (
    Observed,
    Receive,
    Refused,
    Scope,
    Send,
    peer_of,
    read_body,
    request_metadata,
    served_unless_gone,
)
from gateway.doors.http.status import status_json
from gateway.doors.http.transcode import BadRequest, parse_json, reply_json, request_message
from gateway.doors.http.upstream import UnaryCall, UnaryReply, failed
from gateway.routing.health import Upstreams
from gateway.routing.http.bindings import Binding, HttpRoutes, Match
from gateway.routing.table import MethodRoute
from gateway.routing.threaded import ThreadedStreamCall

JSON = b"application/json"
NDJSON = b"application/x-ndjson"
EVENT_STREAM = b"text/event-stream"
# www-authenticate: a token refusal's challenge (RFC 6750), a trailer on the gRPC door.
_REPLY_HEADERS = (
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "www-authenticate",
)
# GET /healthz and /readyz: answered by the gateway's readiness (gateway/app.py) with (status, JSON body).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
Probes = Callable[[str], tuple[int, bytes]]


@dataclass(frozen=True)
class DoorPlan:
    """What one configuration gives the door: its routes, the chain, channels, JSON settings, limits."""

    routes: HttpRoutes
    chain: Chain
    upstreams: Upstreams
    pool: DescriptorPool
    proto_names: bool
    default_timeout: float | None
    max_body_bytes: int
    max_header_bytes: int
    openapi: bytes  # /openapi.json, made once per configuration
    # Opens channels of grpc's blocking API, for client-streaming calls (see routing/threaded.py).
    blocking: Callable[[], Upstreams]
    _callers: dict[tuple[bool, str], Any] = field(default_factory=dict)
    _blocking: list[Upstreams] = field(default_factory=list)  # the blocking channels, once opened

    def caller(self, route: MethodRoute, blocking: bool = False) -> Any:
        """The multicallable of ``route``'s method, made on first use, raw bytes both ways (the door
        makes the request's bytes and decodes the reply's itself); grpc.aio's, or the blocking API's."""
        caller = self._callers.get((blocking, route.path))
        if caller is None:
            if blocking and not self._blocking:
                self._blocking.append(self.blocking())
            channels = self._blocking[0] if blocking else self.upstreams
            caller = getattr(channels.channel(route.upstream), route.kind)(
                route.path, request_serializer=None, response_deserializer=None
            )
            self._callers[(blocking, route.path)] = caller
        return caller

    def unary(
        self, route: MethodRoute, metadata: Metadata, request: bytes, seconds: float | None
    ) -> UnaryCall:
        """``route``'s unary method called with ``request`` on the door's channels (awaiting its
        ``answer()`` makes it)."""
        return UnaryCall(self.upstreams.channel(route.upstream), route.path, request, metadata, seconds)

    async def close(self) -> None:
        await self.upstreams.close()
        for opened in self._blocking:
            await opened.close()


def _metadata_headers(metadata: Metadata | None) -> list[tuple[bytes, bytes]]:
    """An upstream's metadata as ``Grpc-Metadata-<name>`` headers (binary values in base64)."""
    headers = []
    for name, value in metadata or ():
        text = base64.b64encode(value) if isinstance(value, bytes) else value.encode("latin-1")
        headers.append((b"grpc-metadata-" + name.encode("latin-1"), text))
    return headers


def _gateway_headers(metadata: Metadata) -> list[tuple[bytes, bytes]]:
    """The gateway's own reply headers (request id, x-ratelimit-*, retry-after) as plain headers."""
    return [
        (name.encode(), value.encode())
        for name, value in metadata
        if isinstance(value, str) and (name in _REPLY_HEADERS or name == REQUEST_ID_HEADER)
    ]


class HttpDoor:
    """The ASGI app. ``plan`` is swapped whole on a reload; a request in flight keeps its own."""

    def __init__(self, plan: DoorPlan, probes: Probes | None = None) -> None:
        self.plan = plan
        self.probes = probes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        plan = self.plan
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").partition("?")[0]
        verb: str = scope["method"]
        if verb == "GET" and (path == "/openapi.json" or is_docs(path)):
            await _send_document(send, path, plan.openapi)
            return
        if path in PROBE_PATHS and verb in ("GET", "HEAD") and self.probes is not None:
            status, body = self.probes(path)  # no credentials: load balancers and kubelets have none
            await _send_probe(send, status, body)
            return
        request_id = ""
        metadata: Metadata = ()
        try:
            metadata, timeout = request_metadata(scope["headers"], plan.max_header_bytes)
            request_id = request_id_of(metadata)
            matched = plan.routes.match(verb, path)
            if not isinstance(matched, Match):
                if matched.allowed:
                    allowed = ", ".join(matched.allowed)
                    raise Refused(
                        405,
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"{verb} is not allowed on {path}; use {allowed}",
                        [(b"allow", allowed.encode())],
                    )
                raise Refused(404, grpc.StatusCode.NOT_FOUND, f"no route for {verb} {path[:200]}")
            body = await read_body(receive, plan.max_body_bytes)
        except Refused as refused:
            # Counted and logged as a call no route takes, as the gRPC door counts them.
            unrouted = plan.chain.unrouted
            facts = Call("http", path[:200], metadata, peer_of(scope), request_id or request_id_of(()))
            facts.trace = (scope, None, refused.http_status)  # for its span (gateway/ops/tracing.py)
            begin(unrouted, facts)
            try:
                await _send_status(
                    send,
                    refused.http_status,
                    refused.code,
                    str(refused),
                    (),
                    request_id,
                    plan.pool,
                    refused.headers,
                )
            finally:
                end(unrouted, facts, refused.code)
            return
        await _Exchange(plan, matched, scope, metadata, request_id, timeout, body, send, receive).run()


class _Exchange(Observed):
    """One request through the chain and upstream, and its reply."""

    def __init__(
        self,
        plan: DoorPlan,
        matched: Match,
        scope: Scope,
        metadata: Metadata,
        request_id: str,
        timeout: float | None,
        body: bytes,
        send: Send,
        receive: Receive,
    ) -> None:
        self.plan = plan
        self.receive = receive
        self.binding: Binding = matched.binding
        self.variables = matched.variables
        self.scope = scope
        self.send = send
        self.body = body
        self.timeout = timeout
        route = self.binding.route
        self.chain: MethodChain = plan.chain.of(route.path)
        self.facts = Call("http", route.path, metadata, peer_of(scope), request_id, route.request_type)
        self.facts.trace = (scope, self.binding.template.text, None)  # for its span (gateway/ops/tracing.py)
        self.code = grpc.StatusCode.OK

    async def _run(self) -> None:
        binding, plan = self.binding, self.plan
        try:
            requests = self._requests()
        except BadRequest as error:
            await self._fail(grpc.StatusCode.INVALID_ARGUMENT, str(error), ())
            return
        facts = self.facts
        facts.first = requests[0] if requests else None
        verdict = decide(self.chain, facts)
        if isinstance(verdict, Pending):
            verdict = await verdict
        if verdict is not None:
            await self._refuse(verdict)
            return
        route = binding.route
        metadata, timeout = upstream(
            self.chain, facts, self.timeout, route.default_timeout or plan.default_timeout
        )
        if route.client_streaming:
            self.facts.received = len(requests)
        call: Any
        if not route.client_streaming and not route.server_streaming:
            call = plan.unary(route, metadata, requests[0], timeout)
        elif not route.client_streaming:
            call = plan.caller(route)(requests[0], timeout=timeout, metadata=metadata)
        else:
            call = ThreadedStreamCall(
                plan.caller(route, blocking=True), requests, timeout, metadata, route.server_streaming
            )
        await served_unless_gone(self.receive, call, self._reply(route, call), self._left)

    async def _reply(self, route: MethodRoute, call: Any) -> None:
        if route.server_streaming:
            await self._stream(call)
        elif route.client_streaming:
            await self._client_stream(call)
        else:
            await self._answer(await call.answer())

    def _left(self) -> None:
        self.code = grpc.StatusCode.CANCELLED

    def _requests(self) -> list[bytes]:
        """The request messages, serialized: one, or for client streaming one per body line."""
        binding, plan = self.binding, self.plan
        query = parse_qsl(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if not binding.route.client_streaming:
            body = parse_json(self.body, "the request body") if self.body.strip() else None
            message = request_message(binding, self.variables, query, body, plan.pool)
            return [message.SerializeToString()]
        messages = []
        for number, line in enumerate(self.body.splitlines(), 1):
            if line.strip():
                data = parse_json(line, f"line {number} of the request body")
                messages.append(
                    request_message(binding, self.variables, query, data, plan.pool).SerializeToString()
                )
        return messages

    async def _client_stream(self, call: Any) -> None:
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as error:
            await self._answer(failed(error))
            return
        initial = tuple(await call.initial_metadata() or ())
        trailers = tuple(await call.trailing_metadata() or ())
        await self._answer(UnaryReply(grpc.StatusCode.OK, "", reply, initial, trailers))

    async def _answer(self, answer: UnaryReply) -> None:
        """The reply to a call with one reply message: 200 and its JSON, or its status."""
        if answer.code != grpc.StatusCode.OK or answer.reply is None:
            await self._upstream_failed(answer, started=False)
            return
        data = reply_json(self.binding, answer.reply, self.plan.proto_names, self.plan.pool)
        headers = [
            *_gateway_headers(reply_headers(None, self.facts)),
            *_metadata_headers(answer.initial),
            *_metadata_headers(answer.trailers),
        ]
        await _send_json(self.send, 200, data, headers)

    async def _stream(self, call: Any) -> None:
        events = EVENT_STREAM in _header(self.scope, b"accept")
        started = False
        try:
            initial = await call.initial_metadata()
            headers = [
                (b"content-type", EVENT_STREAM if events else NDJSON),
                (b"cache-control", b"no-cache"),
                *_gateway_headers(reply_headers(None, self.facts)),
                *_metadata_headers(initial),
            ]
            async for reply in call:
                if not started:
                    await self.send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                data = json.dumps(reply_json(self.binding, reply, self.plan.proto_names, self.plan.pool))
                line = f"data: {data}\n\n" if events else data + "\n"
                await self.send({"type": "http.response.body", "body": line.encode(), "more_body": True})
                self.facts.sent += 1
            if not started:
                await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except grpc.aio.AioRpcError as error:
            await self._upstream_failed(failed(error), started=started, events=events)

    async def _upstream_failed(self, answer: UnaryReply, started: bool, events: bool = False) -> None:
        route = self.binding.route
        code, details, trailers = answer.code, answer.details, answer.trailers
        message = unavailable_message(route.upstream, route.service, code, details, trailers) or details
        self.code = code
        if not started:
            headers = [*_metadata_headers(answer.initial), *_metadata_headers(trailers)]
            await _send_status(
                self.send,
                HTTP_STATUS.get(code, 500),
                code,
                message,
                trailers,
                self.facts.request_id,
                self.plan.pool,
                headers,
            )
            return
        # The status line is gone: the error is the stream's last line, never a silent cut.
        status = status_json(code, message, trailers, self.plan.pool)
        text = (
            f"event: error\ndata: {json.dumps(status)}\n\n"
            if events
            else json.dumps({"error": status}) + "\n"
        )
        await self.send({"type": "http.response.body", "body": text.encode(), "more_body": False})

    async def _refuse(self, refusal: Refusal) -> None:
        self.code = refusal.code
        await _send_status(
            self.send,
            HTTP_STATUS.get(refusal.code, 500),
            refusal.code,
            refusal.message,
            refusal.trailers,
            self.facts.request_id,
            self.plan.pool,
            _gateway_headers(refusal.trailers),
        )

    async def _fail(self, code: grpc.StatusCode, message: str, trailers: Metadata) -> None:
        await self._refuse(Refusal(code, message, trailers))


def _header(scope: Scope, name: bytes) -> bytes:
    return b",".join(value for key, value in scope["headers"] if key == name)


async def _send_document(send: Send, path: str, openapi: bytes) -> None:
    content_type, body = (JSON, openapi) if path == "/openapi.json" else asset(path)
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_probe(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, data: Any, headers: Iterable[tuple[bytes, bytes]]) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_status(
    send: Send,
    http_status: int,
    code: grpc.StatusCode,
    message: str,
    trailers: Metadata,
    request_id: str,
    pool: DescriptorPool,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    extra = [*headers]
    if request_id:
        extra.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
    await _send_json(send, http_status, status_json(code, message, trailers, pool), extra)
