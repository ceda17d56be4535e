"""The HTTP door sheds what it must: slow request heads, idle keep-alive connections, connections
over its cap; and the gRPC door serves meanwhile. Real gateway processes, raw sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.support.processes import free_port, running, stderr_text

KEY = {"x-api-key": "secret-key"}
HEADER_TIMEOUT = 2.0
IDLE_TIMEOUT = 1.0
# How much later than its timer a close may be seen, on a busy machine.
SLACK = 3.0
REQUEST = b"GET /v1/users/101 HTTP/1.1\r\nhost: gateway\r\nx-api-key: secret-key\r\n\r\n"
# prlimit's soft and hard open-file limit for the capped gateway: its default cap is half of it.
NOFILE = 256
CAP = NOFILE // 2


@dataclass(frozen=True)
class Doors:
    grpc: str
    http_port: int
    process: subprocess.Popen[str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def http_gateway(config: Path, prefix: tuple[str, ...] = ()) -> Iterator[Doors]:
    port, http_port = free_port(), free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running([*args, "--http-listen", f"127.0.0.1:{http_port}"], port, prefix=prefix) as process:
        yield Doors(f"127.0.0.1:{port}", http_port, process)


@pytest.fixture
def doors(services: Services, tmp_path: Path) -> Iterator[Doors]:
    http = f"[http]\nheader_timeout = {HEADER_TIMEOUT}\nidle_timeout = {IDLE_TIMEOUT}\n"
    with http_gateway(write_config(tmp_path, gateway_toml(services.routes, rules="") + http)) as started:
        yield started


@contextlib.asynccontextmanager
async def connections(
    port: int, count: int
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def closed_at(reader: asyncio.StreamReader, within: float) -> float:
    """When (time.monotonic()) the server closed the connection, everything it sent read and dropped."""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass
    return time.monotonic()


async def closed_after(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds from now until the server closes the connection."""
    started = time.monotonic()
    return await closed_at(reader, within) - started


async def get_user_over_http(base: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        return await client.get("/v1/users/101", headers=KEY)


async def get_user_over_grpc(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: users_pb2.User = await users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=101), metadata=tuple(KEY.items()), timeout=5
        )
    return reply.name


async def test_slow_and_silent_request_heads_are_closed_after_header_timeout(doors: Doors) -> None:
    async def drip(writer: asyncio.StreamWriter) -> None:
        for byte in REQUEST[:-2]:  # the head, never its last line
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)

    # Each connection's timer starts when the gateway accepts it: after opening began, before it ended.
    opening = time.monotonic()
    async with (
        connections(doors.http_port, 50) as slow,
        connections(doors.http_port, 100) as silent,
    ):
        opened = time.monotonic()
        drips = [asyncio.ensure_future(drip(writer)) for _, writer in slow]
        closing = [
            asyncio.ensure_future(closed_at(reader, HEADER_TIMEOUT + SLACK)) for reader, _ in slow + silent
        ]
        # Meanwhile a whole request is served.
        await asyncio.sleep(HEADER_TIMEOUT / 2)
        reply = await get_user_over_http(doors.http)
        assert reply.status_code == 200
        assert reply.json()["name"] == "Atul"
        closed = await asyncio.gather(*closing)
        for task in drips:
            task.cancel()
    assert min(closed) - opening >= HEADER_TIMEOUT - 0.05, "closed before header_timeout"
    assert max(closed) - opened <= HEADER_TIMEOUT + SLACK
    # A request whose head arrives whole right after the others were cut is served.
    assert (await get_user_over_http(doors.http)).status_code == 200


async def test_a_keep_alive_connection_is_closed_after_idle_timeout(doors: Doors) -> None:
    async with connections(doors.http_port, 3) as opened:
        for reader, writer in opened:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
        seconds = await asyncio.gather(*(closed_after(reader, IDLE_TIMEOUT + SLACK) for reader, _ in opened))
    assert min(seconds) >= IDLE_TIMEOUT - 0.1
    assert max(seconds) < HEADER_TIMEOUT + SLACK


async def test_blank_lines_between_requests_do_not_keep_a_connection_open(doors: Doors) -> None:
    async with connections(doors.http_port, 1) as [(reader, writer)]:
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")

        async def blank_lines() -> None:
            while True:
                await asyncio.sleep(IDLE_TIMEOUT / 2)
                writer.write(b"\r\n")

        dripping = asyncio.ensure_future(blank_lines())
        try:
            seconds = await closed_after(reader, IDLE_TIMEOUT + HEADER_TIMEOUT + SLACK)
        finally:
            dripping.cancel()
    assert seconds >= HEADER_TIMEOUT


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _answer(reader: asyncio.StreamReader) -> bytes | None:
    """What a connection got within a short while: its bytes up to the close, or None: nothing yet."""
    data = b""
    try:
        async with asyncio.timeout(0.5):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data or None
    except ConnectionResetError:
        pass
    return data


async def test_connections_over_the_cap_are_refused_with_503_and_grpc_serves(
    services: Services, tmp_path: Path
) -> None:
    http = "[http]\nheader_timeout = 60.0\nidle_timeout = 60.0\n"  # nothing is closed by its timers here
    config = write_config(tmp_path, gateway_toml(services.routes, rules="") + http)
    with http_gateway(config, prefix=("prlimit", f"--nofile={NOFILE}:{NOFILE}")) as doors:
        log = stderr_text(doors.process)
        limit = next(json.loads(line) for line in log.splitlines() if '"open-file limit"' in line)
        assert (limit["soft"], limit["hard"]) == (NOFILE, NOFILE)
        assert (await get_user_over_http(doors.http)).status_code == 200

        async with connections(doors.http_port, CAP) as held:
            # Wait until the gateway has taken them all (its accepts follow the connects).
            await asyncio.sleep(0.5)
            # One over the cap: a clear answer, before the request is read.
            async with connections(doors.http_port, 1) as [(reader, writer)]:
                writer.write(REQUEST)
                refusal = await asyncio.wait_for(reader.read(65536), 5)
            head, _, body = refusal.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"connection: close" in head.lower()
            assert json.loads(body) == {
                "code": 14,
                "message": f"the HTTP door has {CAP} connections open, its limit; retry shortly",
                "details": [],
            }
            over = await get_user_over_http(doors.http)
            assert over.status_code == 503
            assert over.headers["connection"] == "close"

            # Far more than the file limit: each is answered or closed, none left hanging, and the
            # gateway keeps its descriptors.
            async with connections(doors.http_port, NOFILE + 100) as flood:
                answers = await asyncio.gather(*(_answer(reader) for reader, _ in flood))
                assert None not in answers, "a connection over the cap was neither answered nor closed"
                assert sum(1 for answer in answers if answer and b" 503 " in answer) >= 1
                assert _open_files(doors.process.pid) < NOFILE
                assert await get_user_over_grpc(doors.grpc) == "Atul"

            # The held connections were served all along.
            reader, writer = held[0]
            writer.write(REQUEST)
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
            # Some close: new calls are served again.
            for _, writer in held[-10:]:
                writer.close()
            deadline = time.monotonic() + 5
            while (reply := await get_user_over_http(doors.http)).status_code != 200:
                assert time.monotonic() < deadline, reply.text
                await asyncio.sleep(0.05)
            assert reply.json()["name"] == "Atul"
            assert await get_user_over_grpc(doors.grpc) == "Atul"
        log = stderr_text(doors.process)
        assert "HTTP connections refused: the door is at max_connections" in log
        assert "Too many open files" not in log
