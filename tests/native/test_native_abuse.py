"""HTTP/2 abuse against the native engine's server, each on one connection while calls go on on another:
rapid reset, a PING flood, a SETTINGS flood, a header block far past the limits, and many idle
connections. Frames are written as raw bytes (an HTTP/2 library is too slow to flood), to 127.0.0.1 only,
bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import hpack

from tests.gateway.h2wire import grpc_request
from tests.native.support import KEY, Gateway, Upstreams, started

BLIND = "/test.Echo/Blind"
ECHO = "/test.Echo/Echo"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL, ENHANCE_YOUR_CALM = 0x8, 0xB
MAX_FRAME = 16384


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def literal_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of literals without indexing and without Huffman: built at once, whatever its size."""

    def integer(value: int) -> bytes:
        if value < 127:
            return bytes([value])
        out, value = [127], value - 127
        while value >= 128:
            out.append(value % 128 + 128)
            value //= 128
        return bytes([*out, value])

    return b"".join(
        b"\x00" + integer(len(name)) + name + integer(len(value)) + value for name, value in headers
    )


@dataclass
class Received:
    """What the server sent on a flooded connection."""

    frames: int = 0
    goaway: int | None = None
    closed: bool = False


def read_frames(sock: socket.socket, received: Received, until: float) -> None:
    """Counts the server's frames and notes its GOAWAY, until it closes, goes quiet for half a second
    after it answered, or ``until`` passes."""
    buffer = b""
    quiet_since = time.monotonic()
    while time.monotonic() < until:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            if received.frames > 2 and time.monotonic() - quiet_since > 0.5:
                return
            continue
        except OSError:
            break
        if not chunk:
            break
        quiet_since = time.monotonic()
        buffer += chunk
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            if buffer[3] == GOAWAY:
                received.goaway = int.from_bytes(buffer[13:17], "big")
            received.frames += 1
            buffer = buffer[9 + length :]
    received.closed = True


def flood(port: int, payload: bytes, seconds: float = 5.0) -> tuple[Received, float]:
    """Sends ``payload`` after the preface on one connection, reading what comes back meanwhile; returns
    what came and how long the sending took."""
    received = Received()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.settimeout(0.2)
        reader = threading.Thread(target=read_frames, args=(sock, received, time.monotonic() + seconds))
        reader.start()
        began = time.monotonic()
        with contextlib.suppress(OSError):  # a server that closes first has defended itself
            sock.settimeout(seconds)
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + payload)
        sent_in = time.monotonic() - began
        reader.join(seconds + 1)
    return received, sent_in


async def calls_meanwhile(gateway: Gateway, work: threading.Thread, at_least: int = 3) -> list[float]:
    """Calls on a connection of their own while ``work`` runs (at least ``at_least``), each of which must
    succeed; how long each took."""
    took: list[float] = []
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        echo = channel.unary_unary(ECHO)
        while work.is_alive() or len(took) < at_least:
            began = time.monotonic()
            assert await echo(b"still here", metadata=KEY, timeout=10) == b"still here"
            took.append(time.monotonic() - began)
            await asyncio.sleep(0.01)
    # Served as ever, give or take a busy machine: no call waits for the flood to end.
    assert max(took) < 3, took
    return took


@contextlib.contextmanager
def in_thread(work: Callable[[], None]) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield thread
    thread.join(15)
    assert not thread.is_alive()


async def test_rapid_reset_is_cut_off_and_reaches_no_upstream(upstreams: Upstreams) -> None:
    upstreams.drain_seen()
    encoder = hpack.Encoder()
    first, rest = encoder.encode(grpc_request(BLIND)), encoder.encode(grpc_request(BLIND))
    streams = 20_000
    payload = b"".join(
        frame(HEADERS, END_HEADERS, stream, first if stream == 1 else rest)
        + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
        for stream in range(1, 2 * streams, 2)
    )
    outcome: list[tuple[Received, float]] = []
    with started(upstreams) as gateway:
        with in_thread(lambda: outcome.append(flood(gateway.port, payload))) as flooding:
            await calls_meanwhile(gateway, flooding)
        [(received, sent_in)] = outcome
        assert sent_in < 1.0
        assert (received.goaway, received.closed) == (ENHANCE_YOUR_CALM, True)
        # The few streams the server took up before it closed the connection were reset before Python's
        # verdict came: none was forwarded.
        await asyncio.sleep(0.5)
        assert {record[0] for record in upstreams.drain_seen()} == {"Echo"}
        assert len([arrival for arrival in gateway.arrivals if arrival.method == BLIND]) < 1000
        assert gateway.server.active_calls == 0


async def test_a_ping_flood_leaves_other_connections_served(upstreams: Upstreams) -> None:
    pings = b"".join(frame(PING, 0, 0, number.to_bytes(8, "big")) for number in range(100_000))
    outcome: list[tuple[Received, float]] = []
    with started(upstreams) as gateway:
        with in_thread(lambda: outcome.append(flood(gateway.port, pings))) as flooding:
            await calls_meanwhile(gateway, flooding)
        [(received, _)] = outcome
        assert received.frames > 1  # answered, for as long as the flood was read


async def test_a_settings_flood_leaves_other_connections_served(upstreams: Upstreams) -> None:
    max_streams = struct.pack(">HI", 0x3, 100)
    settings = frame(SETTINGS, 0, 0, max_streams) * 50_000
    outcome: list[tuple[Received, float]] = []
    with started(upstreams) as gateway:
        with in_thread(lambda: outcome.append(flood(gateway.port, settings))) as flooding:
            await calls_meanwhile(gateway, flooding)
        [(received, _)] = outcome
        assert received.frames > 1


async def test_a_header_block_far_past_the_limit_is_cut_by_http2(upstreams: Upstreams) -> None:
    block = literal_block(grpc_request(ECHO, extra=[(b"x-note", b"n" * (600 << 10))]))
    chunks = [block[at : at + MAX_FRAME] for at in range(0, len(block), MAX_FRAME)]
    payload = frame(HEADERS, END_STREAM, 1, chunks[0])
    payload += b"".join(frame(CONTINUATION, 0, 1, chunk) for chunk in chunks[1:-1])
    payload += frame(CONTINUATION, END_HEADERS, 1, chunks[-1])
    outcome: list[tuple[Received, float]] = []
    with started(upstreams, max_metadata_bytes=8192) as gateway:
        with in_thread(lambda: outcome.append(flood(gateway.port, payload))) as flooding:
            await calls_meanwhile(gateway, flooding, at_least=1)
        [(received, _)] = outcome
        # Far past 16 times the limit (128 KiB): HTTP/2 closes the connection itself, before any call.
        assert received.goaway == ENHANCE_YOUR_CALM
        assert not [arrival for arrival in gateway.arrivals if "x-note" in dict(arrival.metadata)]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_two_thousand_idle_connections_leave_room_and_memory(upstreams: Upstreams) -> None:
    hello = PREFACE + frame(SETTINGS, 0, 0)
    with started(upstreams, header_timeout=30.0) as gateway, contextlib.ExitStack() as held:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            echo = channel.unary_unary(ECHO)
            assert await echo(b"warm", metadata=KEY, timeout=5) == b"warm"
            before = rss_bytes()
            for _ in range(2000):
                sock = held.enter_context(socket.create_connection(("127.0.0.1", gateway.port), timeout=5))
                sock.sendall(hello)
            await asyncio.sleep(0.5)
            async with grpc.aio.insecure_channel(gateway.address) as fresh:
                began = time.monotonic()
                assert await fresh.unary_unary(ECHO)(b"new", metadata=KEY, timeout=5) == b"new"
                assert time.monotonic() - began < 2
            grown = rss_bytes() - before
    # Each idle connection costs the gateway its HTTP/2 state and buffers, tens of KiB at most.
    assert grown < 2000 * 64 * 1024, f"{grown / 2000:.0f} bytes per idle connection"
