"""Raw HTTP/2 over a plain socket: requests no gRPC client library would send.

Built on the ``h2`` state machine with header validation switched off, so that a test can send
wrong content types, other methods, upper-case or control characters in headers, and messages
cut short. Every exchange is bounded by a timeout and talks only to loopback.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions

Headers = list[tuple[bytes, bytes]]


def grpc_frame(message: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """``message`` with gRPC's 5-byte prefix; ``length`` overrides the declared length."""
    declared = len(message) if length is None else length
    return struct.pack(">BI", int(compressed), declared) + message


def grpc_request(path: str, key: str | None = "secret-key", extra: Headers | None = None) -> Headers:
    """The headers of an ordinary gRPC call to ``path``, plus ``extra``."""
    headers: Headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    if key is not None:
        headers.append((b"x-api-key", key.encode()))
    return headers + (extra or [])


@dataclass
class Reply:
    """What came back on the request's stream, and how the connection ended."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset_code: int | None = None  # RST_STREAM error code
    goaway_code: int | None = None  # GOAWAY error code
    closed: bool = False  # the server closed the connection

    @property
    def grpc_status(self) -> int | None:
        """The gRPC status code, from the trailers or a trailers-only reply."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        # gRPC percent-encodes what is not printable ASCII in grpc-message.
        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))

    @property
    def http_status(self) -> int | None:
        value = self.headers.get(":status")
        return None if value is None else int(value)


def _decode(headers: Headers) -> dict[str, str]:
    return {name.decode(errors="replace"): value.decode(errors="replace") for name, value in headers}


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.settimeout(timeout)
    return sock


def _connection() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    return h2.connection.H2Connection(config=config)


def exchange(
    port: int,
    headers: Headers,
    body: bytes = b"",
    *,
    end_stream: bool = True,
    disconnect: bool = False,
    source: str = "127.0.0.1",
    timeout: float = 5.0,
) -> Reply:
    """Open one stream, send ``headers`` then ``body``, and read until the stream or connection ends.

    With ``end_stream=False`` the request is left open (the server sees a client still sending);
    with ``disconnect`` the socket is closed right after sending and nothing is read.
    """
    connection = _connection()
    reply = Reply()
    deadline = time.monotonic() + timeout
    with connect(port, source, timeout) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, headers, end_stream=end_stream and not body)
        if body:
            connection.send_data(stream, body, end_stream=end_stream)
        # A server may refuse the headers and close before the body is all sent: its GOAWAY is read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(connection.data_to_send())
        if disconnect:
            return reply
        _read(sock, connection, deadline, reply, lambda event: _record(event, stream, reply))
    return reply


def _record(event: h2.events.Event, stream: int, reply: Reply) -> bool:
    """Note ``event`` in ``reply``; True when the exchange is over."""
    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
        reply.headers = _decode(list(event.headers or []))
    elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
        reply.trailers = _decode(list(event.headers or []))
    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
        reply.data += event.data or b""
    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
        return True
    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
        reply.reset_code = int(event.error_code or 0)
        return True
    elif isinstance(event, h2.events.ConnectionTerminated):
        reply.goaway_code = int(event.error_code or 0)
        return True
    return False


def send_raw(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    """Send ``payload`` as the first bytes of a connection; return all the server sends until it closes."""
    received = b""
    deadline = time.monotonic() + timeout
    with connect(port, timeout=timeout) as sock:
        sock.sendall(payload)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def flood(port: int, frames: int, *, headers: Headers | None = None, timeout: float = 3.0) -> Reply:
    """On one connection, ``frames`` streams opened with ``headers`` and reset at once (the HTTP/2
    "rapid reset" attack), or without ``headers`` ``frames`` PINGs; then read until the server
    closes or goes quiet. The reply holds a GOAWAY's code, if the server sent one. A server that
    closes the connection before the flood is all sent has defended itself: the GOAWAY it sent
    first, if any, is still read."""
    connection = _connection()
    reply = Reply()
    with connect(port, timeout=timeout) as sock:
        connection.initiate_connection()
        for number in range(frames):
            if headers is None:
                connection.ping(number.to_bytes(8, "big"))
            else:
                stream = connection.get_next_available_stream_id()
                connection.send_headers(stream, headers)
                connection.reset_stream(stream)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(connection.data_to_send())
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        _read(sock, connection, deadline, reply, lambda event: _goaway(event, reply))
    return reply


def _goaway(event: h2.events.Event, reply: Reply) -> bool:
    if isinstance(event, h2.events.ConnectionTerminated):
        reply.goaway_code = int(event.error_code or 0)
    return False


def _read(
    sock: socket.socket,
    connection: h2.connection.H2Connection,
    deadline: float,
    reply: Reply,
    handle: Callable[[h2.events.Event], bool],
) -> None:
    """Feed what the server sends to ``handle`` until it returns True, the server closes or goes quiet."""
    done = False
    while not done and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return  # quiet: the server answered what it would
        except ConnectionResetError:
            reply.closed = True
            return
        if not chunk:
            reply.closed = True
            return
        try:
            events = connection.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            reply.closed = True
            return
        for event in events:
            done = handle(event) or done
        sock.sendall(connection.data_to_send())
