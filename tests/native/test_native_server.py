"""The native engine's server (gateway_native, Rust) on loopback: calls carried to the real user and
recommendation services, decided by a Python thread pulling the server's queue, seen by a grpc.aio client."""

from __future__ import annotations

import asyncio
import gc
import queue
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import gateway_native
import grpc
import h2.connection
import pytest
from shop.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.certs import Certificates, make_certificates
from tests.native.support import (
    KEY,
    RECOMMENDATIONS,
    SLOW_SECONDS,
    USERS,
    Gateway,
    Record,
    Upstreams,
    admit_or_refuse,
    as_dict,
    echo_upstream,
    plan,
    small_server,
    started,
)
from tests.support.processes import free_port

TOO_LARGE = (
    "the request message is 100 bytes, over the gateway's limit of 64 bytes ([limits] max_message_bytes)"
)


async def test_unary_call_is_admitted_and_forwarded(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=104), metadata=KEY, timeout=5
        )
        reply = await call
        headers = as_dict(await call.initial_metadata())
    assert reply.name == "Sean"
    assert headers["x-gateway"] == "native"
    ending = gateway.ending()
    assert (ending.token, ending.method, ending.code, ending.received, ending.sent) == (
        f"token /{USERS}/GetUser",
        f"/{USERS}/GetUser",
        0,
        1,
        1,
    )
    [arrival] = gateway.arrivals
    assert arrival.method == f"/{USERS}/GetUser"
    assert arrival.first == users_pb2.GetUserRequest(user_id=104).SerializeToString()
    assert arrival.peer.startswith("ipv4:127.0.0.1:")
    assert ("x-api-key", "secret-key") in arrival.metadata
    assert arrival.timeout is not None
    assert 4.0 < arrival.timeout <= 5.1  # grpc rounds the timeout it sends up


async def test_refusal_is_trailers_only_with_its_trailers(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=104), metadata=(("x-api-key", "wrong"),), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "invalid API key"
    assert as_dict(caught.value.trailing_metadata())["retry-after"] == "7"
    ending = gateway.ending()
    assert (ending.token, ending.code, ending.received, ending.sent) == ("refused", 16, 0, 0)


async def test_upstream_status_passes_through_untouched(gateway: Gateway, upstreams: Upstreams) -> None:
    request = users_pb2.GetUserRequest(user_id=999)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{upstreams.users}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(request, timeout=5)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as through:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(request, metadata=KEY, timeout=5)
    assert through.value.code() == direct.value.code() == grpc.StatusCode.NOT_FOUND
    assert through.value.details() == direct.value.details()
    assert gateway.ending().code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_metadata_both_ways(gateway: Gateway, upstreams: Upstreams) -> None:
    while not upstreams.seen.empty():
        upstreams.seen.get_nowait()
    payload = b"\x00raw bytes\xff" * 10
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        echo = channel.unary_unary("/test.Echo/Echo")
        call = echo(payload, metadata=(*KEY, ("trace-bin", b"\x00\x01\x02\x03")), timeout=5)
        assert await call == payload
        trailers = as_dict(await call.trailing_metadata())
        headers = as_dict(await call.initial_metadata())
    assert trailers["echo-trailer-bin"] == b"\x00\xff\x01"
    assert trailers["echo-trailer"] == "yes"
    assert headers["x-gateway"] == "native"
    [arrival] = gateway.arrivals
    assert ("trace-bin", b"\x00\x01\x02\x03") in arrival.metadata
    assert arrival.first == payload
    method, seen, _ = upstreams.seen.get(timeout=5)
    received = dict(seen)
    assert method == "Echo"
    assert received["trace-bin"] == b"\x00\x01\x02\x03"
    assert received["x-client-bin"] == b"\x01\x02"
    assert received["x-gateway-client"] == "tester"
    ending = gateway.ending()
    assert (ending.code, ending.received, ending.sent) == (0, 1, 1)


async def test_server_stream_arrives_whole(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = users_pb2_grpc.UserServiceStub(channel).ListUsers(
            users_pb2.ListUsersRequest(), metadata=KEY, timeout=5
        )
        users = [user.user_id async for user in call]
    assert users == [101, 102, 103, 104]
    ending = gateway.ending()
    assert (ending.code, ending.received, ending.sent) == (0, 1, 4)


async def test_client_stream_of_many_messages(gateway: Gateway) -> None:
    ids = [101 + i % 4 for i in range(500)]

    async def requests() -> object:
        for user_id in ids:
            yield recommendations_pb2.GetRecommendationsRequest(user_id=user_id)

    async with grpc.aio.insecure_channel(gateway.address) as channel:
        reply = await recommendations_pb2_grpc.RecommendationServiceStub(channel).RecommendForGroup(
            requests(), metadata=KEY, timeout=10
        )
    assert list(reply.user_ids) == [101, 102, 103, 104]
    ending = gateway.ending()
    assert (ending.code, ending.received, ending.sent) == (0, 500, 1)
    [arrival] = gateway.arrivals
    assert arrival.first == recommendations_pb2.GetRecommendationsRequest(user_id=101).SerializeToString()


async def test_bidi_stream_of_many_messages(gateway: Gateway) -> None:
    count = 300
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = recommendations_pb2_grpc.RecommendationServiceStub(channel).StreamRecommendations(
            metadata=KEY, timeout=10
        )
        replies = []
        for i in range(count):
            await call.write(recommendations_pb2.GetRecommendationsRequest(user_id=101 + i % 4))
            replies.append(await call.read())
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert [reply.user_id for reply in replies] == [101 + i % 4 for i in range(count)]
    ending = gateway.ending()
    assert (ending.code, ending.received, ending.sent) == (0, count, count)
    assert gateway.arrivals[0].first is None


async def test_upstream_down_is_unavailable_naming_it(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = channel.unary_unary("/test.Down/Call")
        for _ in range(2):  # the second call fails fast: the address is in backoff
            started_at = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"", metadata=KEY, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details().startswith(
                "upstream down for test.Down is unavailable: connection refused (127.0.0.1:"
            )
            # The gateway's own error: the reply headers are initial metadata, the status trailers.
            assert as_dict(caught.value.initial_metadata())["x-gateway"] == "native"
            assert "x-gateway" not in as_dict(caught.value.trailing_metadata())
            assert time.monotonic() - started_at < 2
            assert gateway.ending().code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_caller_deadline_shorter_than_a_slow_call(gateway: Gateway, upstreams: Upstreams) -> None:
    while not upstreams.seen.empty():
        upstreams.seen.get_nowait()
    started_at = time.monotonic()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Echo/Sleep")(b"zz", metadata=KEY, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_at < SLOW_SECONDS - 1
    _, _, time_remaining = upstreams.seen.get(timeout=5)
    assert time_remaining is not None
    # The caller's deadline went upstream as grpc-timeout (the upstream's grpc rounds what it reads
    # to its own clock's ticks, so a hair over what was sent).
    assert time_remaining <= 0.51
    # The gateway's deadline and the caller's fall on the same instant: the gateway's timer usually
    # ends the call first, but on a loaded machine the caller's reset of the stream may come first.
    # test_route_default_timeout has the gateway's deadline alone.
    ended = gateway.ending().code
    assert ended in (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], grpc.StatusCode.CANCELLED.value[0])


async def test_route_default_timeout(gateway: Gateway) -> None:
    started_at = time.monotonic()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Echo/SlowDefault")(b"", metadata=KEY)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started_at < SLOW_SECONDS - 1
    assert gateway.ending().code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_cancelled_call_ends_cancelled(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = channel.unary_unary("/test.Echo/Sleep")(b"", metadata=KEY, timeout=10)
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    ending = gateway.ending()
    assert ending.code == grpc.StatusCode.CANCELLED.value[0]
    assert gateway.server.active_calls == 0


async def test_message_over_the_limit(upstreams: Upstreams) -> None:
    with started(upstreams, max_message_bytes=64) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.Echo/Echo")(b"x" * 100, metadata=KEY, timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == TOO_LARGE
        ending = gateway.ending()
        assert (ending.token, ending.code) == (None, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert not gateway.arrivals


async def test_later_message_over_the_limit_ends_the_stream(upstreams: Upstreams) -> None:
    with started(upstreams, max_message_bytes=64) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            # Raw bytes: no valid request message is that large.
            call = channel.stream_stream(f"/{RECOMMENDATIONS}/StreamRecommendations")(metadata=KEY, timeout=5)
            await call.write(recommendations_pb2.GetRecommendationsRequest(user_id=101).SerializeToString())
            reply = recommendations_pb2.Recommendations.FromString(await call.read())
            assert reply.user_id == 101
            await call.write(b"x" * 100)
            assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await call.details() == TOO_LARGE
        ending = gateway.ending()
        assert (ending.code, ending.received, ending.sent) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            1,
            1,
        )


async def test_arrival_left_unanswered_is_internal(upstreams: Upstreams) -> None:
    with started(upstreams, decide=lambda arrival: None) as gateway:
        gc.collect()
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.Echo/Echo")(b"", metadata=KEY, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "the gateway failed to decide on this call"
        ending = gateway.ending()
        assert (ending.token, ending.code) == (None, grpc.StatusCode.INTERNAL.value[0])


async def test_a_second_answer_raises(upstreams: Upstreams) -> None:
    outcomes: list[str] = []

    def twice(arrival: gateway_native.Arrival) -> None:
        admit_or_refuse(arrival)
        try:
            arrival.refuse(None, 13, "again", (), ())
        except RuntimeError as error:
            outcomes.append(str(error))

    with started(upstreams, decide=twice) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            reply = await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5
            )
        assert reply.name == "Atul"
        assert gateway.ending().code == 0
    assert outcomes == ["this call was already admitted or refused"]


async def test_drain_refuses_new_calls_without_asking(gateway: Gateway) -> None:
    gateway.server.drain()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=101), metadata=KEY, timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the gateway is shutting down; retry on another replica"
    ending = gateway.ending()
    assert (ending.token, ending.code) == (None, grpc.StatusCode.UNAVAILABLE.value[0])
    assert not gateway.arrivals


def test_bind_error_names_the_address() -> None:
    with ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = small_server(port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            server.start()
        server.stop(0)
        assert server.next_batch() is None


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _credentials(certificates: Certificates, client: Path | None) -> grpc.ChannelCredentials:
    pair = {"client": certificates.client, "stranger": certificates.stranger}.get(
        client.name if client else ""
    )
    return grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )


async def test_mutual_tls_listener(upstreams: Upstreams, certificates: Certificates) -> None:
    tls = (
        certificates.server.cert.read_bytes(),
        certificates.server.key.read_bytes(),
        certificates.ca.read_bytes(),
    )
    request = users_pb2.GetUserRequest(user_id=104)
    with started(upstreams, tls=tls) as gateway:
        for who, works in ((Path("client"), True), (Path("stranger"), False), (None, False)):
            credentials = _credentials(certificates, who)
            async with grpc.aio.secure_channel(gateway.address, credentials) as channel:
                stub = users_pb2_grpc.UserServiceStub(channel)
                if works:
                    assert (await stub.GetUser(request, metadata=KEY, timeout=5)).name == "Sean"
                    assert gateway.ending().code == 0
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.GetUser(request, metadata=KEY, timeout=5)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(gateway.arrivals) == 1


async def test_upstream_over_tls(upstreams: Upstreams, certificates: Certificates) -> None:
    seen: queue.Queue[Record] = queue.Queue()
    server = echo_upstream(seen)
    credentials = grpc.ssl_server_credentials(
        [(certificates.server.key.read_bytes(), certificates.server.cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        ca = certificates.ca.read_bytes()
        more_upstreams: dict[str, gateway_native.Upstream] = {
            "secure": ([f"127.0.0.1:{port}"], (ca, None, None, "")),
            "named": ([f"127.0.0.1:{port}"], (ca, None, None, "localhost")),
            "untrusted": ([f"127.0.0.1:{port}"], (None, None, None, "")),
        }
        more_methods: dict[str, gateway_native.Method] = {
            f"/{name}.Echo/Echo": (name, f"{name}.Echo", False, False, True, None) for name in more_upstreams
        }
        with started(upstreams, more_methods=more_methods, more_upstreams=more_upstreams) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                for name in ("secure", "named"):
                    # The in-test upstream serves test.Echo: the method is renamed on the way.
                    gateway.server.set_plan(*_renamed(upstreams, more_methods, more_upstreams, name))
                    echo = channel.unary_unary("/test.Echo/Echo")
                    assert await echo(b"over tls", metadata=KEY, timeout=5) == b"over tls"
                    assert gateway.ending().code == 0
                gateway.server.set_plan(*_renamed(upstreams, more_methods, more_upstreams, "untrusted"))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/test.Echo/Echo")(b"", metadata=KEY, timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "upstream untrusted for untrusted.Echo is unavailable: TLS handshake failed" in (
                    caught.value.details()
                )
    finally:
        server.stop(None)


def _renamed(
    upstreams: Upstreams,
    more_methods: dict[str, gateway_native.Method],
    more_upstreams: dict[str, gateway_native.Upstream],
    name: str,
) -> tuple[
    dict[str, gateway_native.Method],
    dict[str, gateway_native.Upstream],
    tuple[float, float, bool],
    tuple[float, float],
]:
    """The test plan with /test.Echo/Echo routed to upstream ``name``."""
    methods, targets = plan(upstreams, free_port())
    methods["/test.Echo/Echo"] = more_methods[f"/{name}.Echo/Echo"]
    targets.update(more_upstreams)
    return methods, targets, (10.0, 5.0, True), (0.05, 0.5)


def test_silent_connection_is_closed_after_the_header_timeout(upstreams: Upstreams) -> None:
    with (
        started(upstreams, header_timeout=0.3) as gateway,
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock,
    ):
        started_at = time.monotonic()
        while sock.recv(1024):  # the server's SETTINGS, then the end
            pass
        assert 0.2 < time.monotonic() - started_at < 2
        assert gateway.server.active_calls == 0


def _frames(sock: socket.socket) -> Iterator[tuple[int, int, int]]:
    """The (type, flags, stream id) of each HTTP/2 frame the server sends, until it closes."""
    buffer = b""
    while data := sock.recv(65536):
        buffer += data
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            yield buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            buffer = buffer[9 + length :]


def test_idle_connection_gets_goaway(upstreams: Upstreams) -> None:
    headers_frame, goaway_frame, end_stream = 0x1, 0x7, 0x1
    with (
        started(upstreams, idle_timeout=0.5) as gateway,
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock,
    ):
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/test.Echo/Sleep"),
            (":authority", f"127.0.0.1:{gateway.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-api-key", "wrong"),
        ]
        conn.send_headers(conn.get_next_available_stream_id(), headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        ended_at = goaway_at = None
        for kind, flags, stream in _frames(sock):
            if kind == headers_frame and stream == 1 and flags & end_stream:
                ended_at = time.monotonic()
            if kind == goaway_frame:
                goaway_at = time.monotonic()
                break
    assert ended_at is not None
    assert goaway_at is not None
    assert 0.3 < goaway_at - ended_at < 3
    assert gateway.ending().code == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_stop_cancels_what_outlives_the_grace(upstreams: Upstreams) -> None:
    with started(upstreams) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            call = channel.unary_unary("/test.Echo/Sleep")(b"", metadata=KEY, timeout=10)
            await asyncio.sleep(0.3)
            started_at = time.monotonic()
            await asyncio.to_thread(gateway.server.stop, 0.2)
            assert time.monotonic() - started_at < 3
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert gateway.ending().code == grpc.StatusCode.CANCELLED.value[0]
        assert gateway.server.active_calls == 0


async def test_upstream_on_a_unix_socket(upstreams: Upstreams, tmp_path: Path) -> None:
    seen: queue.Queue[Record] = queue.Queue()
    server = echo_upstream(seen)
    path = tmp_path / "echo.sock"
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        more_methods: dict[str, gateway_native.Method] = {
            "/test.Echo/Echo": ("local", "test.Echo", False, False, True, None)
        }
        more_upstreams: dict[str, gateway_native.Upstream] = {"local": ([f"unix:{path}"], None)}
        with started(upstreams, more_methods=more_methods, more_upstreams=more_upstreams) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                echo = channel.unary_unary("/test.Echo/Echo")
                assert await echo(b"local", metadata=KEY, timeout=5) == b"local"
            assert gateway.ending().code == 0
        method, metadata, _ = seen.get(timeout=5)
        assert method == "Echo"
        assert dict(metadata)["x-gateway-client"] == "tester"
    finally:
        server.stop(None)
