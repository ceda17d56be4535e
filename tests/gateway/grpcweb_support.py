"""gRPC-Web as the tests speak it: frames in, frames and trailers out, written from the protocol's text
(grpc/doc/PROTOCOL-WEB.md), not from the gateway's code."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


def frame(message: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(message)) + message


def text_bytes(body: bytes) -> bytes:
    """A text-mode body as bytes: base64 that may be padded at the end of any frame, so 4 by 4."""
    return b"".join(base64.b64decode(body[start : start + 4]) for start in range(0, len(body), 4))


@dataclass(frozen=True)
class WebReply:
    status: int
    headers: httpx.Headers
    messages: list[bytes]
    trailers: dict[str, str]
    frame_flags: list[int]

    @property
    def code(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def message(self) -> str:
        return unquote(self.trailers.get("grpc-message", ""))


def parse(reply: httpx.Response) -> WebReply:
    """The reply's frames: messages, and the trailer frame's lines."""
    body = reply.content
    if reply.headers.get("content-type", "").startswith(TEXT):
        body = text_bytes(body)
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    flags = []
    offset = 0
    while offset < len(body):
        flag, length = struct.unpack_from(">BI", body, offset)
        data = body[offset + 5 : offset + 5 + length]
        assert len(data) == length, f"a frame cut short at byte {offset}"
        flags.append(flag)
        if flag & 0x80:
            for line in data.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip()] = value.strip()
        else:
            messages.append(data)
        offset += 5 + length
    return WebReply(reply.status_code, reply.headers, messages, trailers, flags)
