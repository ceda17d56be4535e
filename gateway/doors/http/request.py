"""What the HTTP doors read from a request before the chain: headers as gRPC metadata, the deadline,
the body, the caller's address; the door's own refusals of a request it cannot take; a call
observed from its start to its end; and the client's leaving, which cancels its call."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from gateway.call.chain import MethodChain
from gateway.call.lifecycle import begin, end
from gateway.call.step import Call, Metadata

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Headers that describe this HTTP hop, not the call: never metadata.
_HTTP_ONLY = frozenset({"content-length", "accept", "accept-encoding", "expect", "grpc-timeout"})
# gRPC metadata keys: what grpc's client accepts (anything else would fail the call inside grpc).
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])\Z")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Refused(Exception):
    """The request ends here with ``status``: the door's own 4xx, before the chain."""

    def __init__(
        self,
        http_status: int,
        code: grpc.StatusCode,
        message: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.headers = tuple(headers)


def peer_of(scope: Scope) -> Callable[[], str]:
    client = scope.get("client")

    def peer() -> str:
        if not client:
            return "unknown"
        host, port = client
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    return peer


def request_metadata(headers: Iterable[tuple[bytes, bytes]], limit: int) -> tuple[Metadata, float | None]:
    """Request headers as gRPC metadata (by the gRPC door's rules once the chain is done), and the
    ``grpc-timeout`` header's seconds."""
    size = 0
    metadata: list[tuple[str, str | bytes]] = []
    timeout = None
    for raw_name, raw_value in headers:
        size += len(raw_name) + len(raw_value)
        name = raw_name.decode("latin-1")
        if name == "grpc-timeout":
            timeout = _grpc_timeout(raw_value.decode("latin-1"))
        if name in _HTTP_ONLY or not _METADATA_KEY.match(name):
            continue
        if name.endswith("-bin"):
            try:
                metadata.append(
                    (name, base64.b64decode(raw_value + b"=" * (-len(raw_value) % 4), validate=False))
                )
            except (binascii.Error, ValueError):
                raise Refused(400, grpc.StatusCode.INVALID_ARGUMENT, f"header {name} is not base64") from None
        else:
            metadata.append((name, raw_value.decode("latin-1")))
    if size > limit:
        raise Refused(
            431, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request's headers are over {limit} bytes"
        )
    return tuple(metadata), timeout


def _grpc_timeout(text: str) -> float:
    found = _TIMEOUT.match(text)
    if found is None:
        raise Refused(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout {text!r} is not a gRPC timeout such as 5S or 500m",
        )
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(499, grpc.StatusCode.CANCELLED, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request body is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Observed(ABC):
    """One call of an HTTP door, begun and ended (gateway/call/lifecycle.py), whatever ends it, with
    ``code``."""

    chain: MethodChain
    facts: Call
    code: grpc.StatusCode

    async def run(self) -> None:
        begin(self.chain, self.facts)
        try:
            await self._run()
        finally:
            end(self.chain, self.facts, self.code)

    @abstractmethod
    async def _run(self) -> None:
        """The call itself: through the chain, upstream, and its reply."""


async def served_unless_gone(
    receive: Receive, call: Any, serving: Awaitable[None], left: Callable[[], None]
) -> None:
    """Await ``serving`` (the reply to ``call``, an upstream call); if the client goes away first,
    ``left()`` and cancel ``call``. The request's body has been read whole, so the next message
    ``receive`` has is the client leaving. Cancelling for any other reason (the door stopping) is
    raised."""
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        left()
        call.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await serving
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        watcher.cancel()
        if not call.done():
            call.cancel()
