"""gRPC-Web on the HTTP door's listener: what browsers speak, since they cannot read HTTP/2 trailers.

A ``POST /package.Service/Method`` with ``content-type: application/grpc-web`` (``+proto``) or
``application/grpc-web-text`` (base64; ``+proto`` too) is a gRPC call: unary or server streaming,
through the call's lifecycle like any other door's calls (gateway/call/lifecycle.py), forwarded as
bytes. The wire format is gRPC's with the status moved into the body (grpc/doc/PROTOCOL-WEB.md):

- each message is a frame: flag 0x00, its length (4 bytes, big-endian), its bytes;
- the trailers are the last frame, flag 0x80, written as HTTP/1 header lines (``grpc-status: 0``);
- a call that ends before any message (a refusal, an upstream's error) is "trailers-only": its status
  and trailers are the response's headers, and the status (code, message, details) is repeated in a
  trailer frame, as clients read either one;
- text mode is base64: the request's body is decoded whole (it may come in chunks, padded or not),
  each reply frame is encoded on its own. The reply is text when the request is, or when ``Accept``
  asks for ``application/grpc-web-text``.

Browsers cannot stream requests over gRPC-Web: client-streaming and bidi methods are UNIMPLEMENTED.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import grpc

from gateway.call.chain import MethodChain
from gateway.call.lifecycle import Pending, decide, upstream
from gateway.call.replies import incomplete_request, reply_headers, unavailable_message
from gateway.call.requestid import request_id_of
from gateway.call.step import Call, Metadata, Refusal
from gateway.doors.http.door import DoorPlan, HttpDoor
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
from gateway.doors.http.status import DETAILS_HEADER
from gateway.doors.http.upstream import UnaryReply
from gateway.routing.table import MethodRoute

DOOR = "grpc-web"
GRPC_WEB = b"application/grpc-web"
TEXT = b"application/grpc-web-text"
_BINARY_REPLY = b"application/grpc-web+proto"
_TEXT_REPLY = b"application/grpc-web-text+proto"
_HEADER = struct.Struct(">BI")
_TRAILERS_FLAG = 0x80
# grpc-message is percent-encoded: everything but printable ASCII, and % itself.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


class BadFrame(Exception):
    """The request's body is not gRPC-Web's framing of one message."""


def is_grpc_web(scope: Scope) -> bool:
    """A POST whose content type is gRPC-Web's (any subtype)."""
    if scope["method"] != "POST":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.startswith(GRPC_WEB))
    return False


def frame(message: bytes) -> bytes:
    return _HEADER.pack(0, len(message)) + message


def trailer_frame(code: grpc.StatusCode, message: str, trailers: Metadata) -> bytes:
    block = b"".join(
        f"{name}: {value}\r\n".encode("latin-1") for name, value in _status_lines(code, message, trailers)
    )
    return _HEADER.pack(_TRAILERS_FLAG, len(block)) + block


def _status_lines(code: grpc.StatusCode, message: str, trailers: Metadata) -> list[tuple[str, str]]:
    lines = [("grpc-status", str(code.value[0]))]
    if message:
        lines.append(("grpc-message", quote(message, safe=_MESSAGE_SAFE)))
    lines += _text_metadata(trailers)
    return lines


def _text_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """Metadata as header values: ``-bin`` values in base64, as gRPC writes them."""
    return [
        (name, base64.b64encode(value).decode() if isinstance(value, bytes) else value)
        for name, value in metadata
    ]


def messages(body: bytes) -> list[bytes]:
    """The messages of a request's body (binary framing).

    Raises:
        BadFrame: a frame is cut short, compressed, a trailer frame, or has an unknown flag.
    """
    found = []
    offset, size = 0, len(body)
    while offset < size:
        if size - offset < _HEADER.size:
            raise BadFrame(
                f"the frame at byte {offset} is cut short: {size - offset} bytes of a 5-byte header"
            )
        flag, length = _HEADER.unpack_from(body, offset)
        if flag != 0:
            what = "compressed" if flag == 1 else "a trailer frame" if flag & _TRAILERS_FLAG else "unknown"
            raise BadFrame(
                f"the frame at byte {offset} has flag {flag:#04x} ({what}); send uncompressed messages"
            )
        start = offset + _HEADER.size
        if start + length > size:
            raise BadFrame(f"the frame at byte {offset} says {length} bytes but {size - start} follow")
        found.append(body[start : start + length])
        offset = start + length
    return found


def decode_text(body: bytes) -> bytes:
    """A text-mode body as bytes: base64, whose padding may end any chunk of it, not only the last.

    Raises:
        BadFrame: it is not base64.
    """
    text = body.translate(None, b"\r\n\t ")
    parts = []
    start = 0
    try:
        padding = text.find(b"=")
        while padding != -1:
            end = text.rfind(b"=", padding, padding + 2) + 1  # one or two '='
            parts.append(binascii.a2b_base64(text[start:end], strict_mode=True))
            start = end
            padding = text.find(b"=", start)
        parts.append(binascii.a2b_base64(text[start:], strict_mode=True))
    except binascii.Error as error:
        raise BadFrame(f"the text-mode body is not base64 ({error})") from None
    return b"".join(parts)


class GrpcWebDoor:
    """The ASGI layer that takes gRPC-Web calls and hands every other request to the HTTP/JSON door."""

    def __init__(self, door: HttpDoor) -> None:
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_grpc_web(scope):
            await _WebCall(self.door.plan, scope, receive, send).run()
        else:
            await self.door(scope, receive, send)


class _WebCall(Observed):
    """One gRPC-Web call through the chain and upstream, and its reply."""

    def __init__(self, plan: DoorPlan, scope: Scope, receive: Receive, send: Send) -> None:
        self.plan = plan
        self.scope = scope
        self.receive = receive
        self.send = send
        content_type = accept = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
        self.content_type = content_type.partition(b";")[0].strip()
        self.text_request = self.content_type.startswith(TEXT)
        if TEXT in accept:
            self.text = True
        elif GRPC_WEB in accept:
            self.text = False
        else:
            self.text = self.text_request  # the reply's mode
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.path = raw_path.decode("latin-1").partition("?")[0]
        self.chain: MethodChain = plan.chain.of(self.path)
        self.route: MethodRoute | None = self.chain.route
        request_type = None if self.route is None else self.route.request_type
        self.facts = Call(DOOR, self.path[:200], (), peer_of(scope), "", request_type)
        self.code = grpc.StatusCode.OK
        self.finished = False

    async def _run(self) -> None:
        plan, facts, route = self.plan, self.facts, self.route
        try:
            metadata, timeout = request_metadata(self.scope["headers"], plan.max_header_bytes)
        except Refused as refused:
            facts.request_id = request_id_of(())
            await self._end(Refusal(refused.code, str(refused)))
            return
        facts.metadata = metadata
        facts.request_id = request_id_of(metadata)
        refusal = self._unsupported(route)
        if refusal is not None:
            await self._end(refusal)
            return
        try:
            request = await self._request()
        except Refused as refused:
            await self._end(Refusal(refused.code, str(refused)))
            return
        except BadFrame as error:
            await self._end(Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{error}"))
            return
        facts.first = request  # what Call.message() decodes, if a step reads the request
        verdict = decide(self.chain, facts)
        if isinstance(verdict, Pending):
            verdict = await verdict
        if verdict is not None:
            await self._end(verdict)
            return
        if route is None:  # one of the gateway's own services, which only the gRPC door serves
            await self._end(
                Refusal(grpc.StatusCode.UNIMPLEMENTED, f"{self.path} is served on the gRPC door only")
            )
            return
        await self._forward(route, request, timeout)

    def _unsupported(self, route: MethodRoute | None) -> Refusal | None:
        if self.content_type not in (GRPC_WEB, TEXT) and not self.content_type.endswith(b"+proto"):
            subtype = self.content_type.decode("latin-1")
            return Refusal(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{subtype[:100]} is not served: the gateway forwards protobuf messages "
                "(application/grpc-web+proto or application/grpc-web-text+proto)",
            )
        if route is not None and route.client_streaming:
            kind = "bidirectional streaming" if route.server_streaming else "client streaming"
            return Refusal(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{route.path.rsplit('/', 1)[-1]} is {kind}: browsers cannot stream requests over "
                "gRPC-Web; call it on the gRPC door, or over HTTP/JSON with one request message a line",
            )
        return None

    async def _request(self) -> bytes:
        """The one request message; raises Refused or BadFrame."""
        limit = self.plan.max_body_bytes
        frame_limit = limit + _HEADER.size
        body = await read_body(self.receive, frame_limit * 4 // 3 + 64 if self.text_request else frame_limit)
        found = messages(decode_text(body) if self.text_request else body)
        if len(found) != 1:
            if not found:
                refusal = incomplete_request(self.path)
                raise BadFrame(refusal.message)
            name = self.path.rsplit("/", 1)[-1]
            raise BadFrame(f"{name} takes exactly one request message; the body holds {len(found)}")
        if len(found[0]) > limit:
            raise Refused(
                413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request message is over {limit} bytes"
            )
        return found[0]

    async def _forward(self, route: MethodRoute, request: bytes, remaining: float | None) -> None:
        plan = self.plan
        metadata, seconds = upstream(
            self.chain, self.facts, remaining, route.default_timeout or plan.default_timeout
        )
        call: Any
        if route.server_streaming:
            call = plan.caller(route)(request, timeout=seconds, metadata=metadata)
        else:
            call = plan.unary(route, metadata, request, seconds)
        await served_unless_gone(self.receive, call, self._reply(route, call), self._left)

    async def _reply(self, route: MethodRoute, call: Any) -> None:
        if route.server_streaming:
            await self._stream(route, call)
        else:
            await self._answer(route, await call.answer())

    def _left(self) -> None:
        if not self.finished:
            self.code = grpc.StatusCode.CANCELLED

    async def _answer(self, route: MethodRoute, answer: UnaryReply) -> None:
        if answer.code != grpc.StatusCode.OK or answer.reply is None:
            await self._upstream_failed(route, answer.code, answer.details, answer.initial, answer.trailers)
            return
        body = self._encoded(frame(answer.reply)) + self._encoded(
            trailer_frame(grpc.StatusCode.OK, "", answer.trailers)
        )
        headers = self._headers(reply_headers(answer.initial, self.facts))
        headers.append((b"content-length", str(len(body)).encode()))
        self.finished = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def _stream(self, route: MethodRoute, call: Any) -> None:
        started = False
        initial: Metadata = ()
        try:
            initial = tuple(await call.initial_metadata() or ())
            async for reply in call:
                if not started:
                    headers = self._headers(reply_headers(initial, self.facts))
                    await self.send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                await self.send(
                    {"type": "http.response.body", "body": self._encoded(frame(reply)), "more_body": True}
                )
                self.facts.sent += 1
            trailers = tuple(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
            trailers = tuple(error.trailing_metadata() or ())
            if not started:
                initial = tuple(error.initial_metadata() or initial)
                await self._upstream_failed(route, code, details, initial, trailers)
                return
            self.code = code
            message = unavailable_message(route.upstream, route.service, code, details, trailers) or details
            await self._last(trailer_frame(code, message, trailers))
            return
        if not started:
            headers = self._headers(reply_headers(initial, self.facts))
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._last(trailer_frame(grpc.StatusCode.OK, "", trailers))

    async def _last(self, trailers: bytes) -> None:
        self.finished = True
        await self.send({"type": "http.response.body", "body": self._encoded(trailers), "more_body": False})

    async def _upstream_failed(
        self,
        route: MethodRoute,
        code: grpc.StatusCode,
        details: str,
        initial: Metadata,
        trailers: Metadata,
    ) -> None:
        message = unavailable_message(route.upstream, route.service, code, details, trailers) or details
        await self._end(Refusal(code, message, trailers), initial)

    async def _end(self, status: Refusal, initial: Metadata = ()) -> None:
        """A trailers-only reply: the status in the headers and in the body's one (trailer) frame."""
        self.code = status.code
        headers = self._headers(reply_headers(initial, self.facts))
        lines = _status_lines(status.code, status.message, status.trailers)
        headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in lines]
        # The frame repeats the status alone: clients that merge headers and trailers (connect-es)
        # would read every other trailer twice.
        details = tuple((name, value) for name, value in status.trailers if name == DETAILS_HEADER)
        body = self._encoded(trailer_frame(status.code, status.message, details))
        headers.append((b"content-length", str(len(body)).encode()))
        self.finished = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    def _headers(self, metadata: Metadata) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", _TEXT_REPLY if self.text else _BINARY_REPLY)]
        headers += [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in _text_metadata(metadata)
        ]
        return headers

    def _encoded(self, data: bytes) -> bytes:
        return base64.b64encode(data) if self.text else data
