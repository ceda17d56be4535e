"""The native engine's own answers: initial metadata on refusals and errors, the checks a caller's headers
and first message pass before Python is asked (metadata size, base64, grpc-timeout, compression), retries
of idempotent unary methods, and a request that is not a POST."""

from __future__ import annotations

import asyncio
import gzip
import re
import time
import zlib

import gateway_native
import grpc
import pytest

from tests.gateway.h2wire import Headers, Reply, exchange, grpc_frame, grpc_request
from tests.native.support import KEY, Gateway, Record, Upstreams, as_dict, small_server, started

ECHO = "/test.Echo/Echo"
BLIND = "/test.Echo/Blind"
FAIL = "/test.Echo/Fail"
FLAKY = "/test.Echo/Flaky"
REQUEST_ID = ("x-request-id", "req-1")


def with_request_id(arrival: gateway_native.Arrival) -> None:
    """As the gateway's decider does: the request id in the initial metadata of every reply."""
    if ("x-api-key", "secret-key") not in arrival.metadata:
        arrival.refuse("refused", 16, "invalid API key", (REQUEST_ID,), (("retry-after", "7"),))
        return
    arrival.admit("admitted", arrival.metadata, (REQUEST_ID, ("x-gateway", "native")))


def without_reply_headers(arrival: gateway_native.Arrival) -> None:
    arrival.admit("admitted", arrival.metadata, ())


async def raw(port: int, headers: Headers, body: bytes = b"") -> Reply:
    return await asyncio.to_thread(exchange, port, headers, body)


def keyed(path: str, *extra: tuple[bytes, bytes]) -> Headers:
    return grpc_request(path, "secret-key", list(extra))


# --- initial metadata ----------------------------------------------------------------------------


async def test_refusal_sends_its_headers_then_trailers(upstreams: Upstreams) -> None:
    with started(upstreams, with_request_id) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(ECHO)(b"x", metadata=(("x-api-key", "wrong"),), timeout=5)
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid API key",
        )
        assert as_dict(caught.value.initial_metadata())["x-request-id"] == "req-1"
        trailers = as_dict(caught.value.trailing_metadata())
        assert trailers["retry-after"] == "7"
        assert "x-request-id" not in trailers
        assert gateway.ending().code == grpc.StatusCode.UNAUTHENTICATED.value[0]

        # On the wire: HEADERS without a status, no DATA, then the trailers.
        reply = await raw(gateway.port, grpc_request(ECHO, "wrong"), grpc_frame(b"x"))
        assert (reply.http_status, reply.headers["x-request-id"], reply.data) == (200, "req-1", b"")
        assert "grpc-status" not in reply.headers
        assert (reply.trailers["grpc-status"], reply.trailers["retry-after"]) == ("16", "7")


async def test_refusal_without_headers_is_trailers_only(gateway: Gateway) -> None:
    reply = await raw(gateway.port, grpc_request(ECHO, "wrong"), grpc_frame(b"x"))
    assert (reply.headers["grpc-status"], reply.headers["retry-after"], reply.trailers) == ("16", "7", {})


async def test_gateway_errors_after_admission_send_the_reply_headers_first(upstreams: Upstreams) -> None:
    with started(upstreams, with_request_id) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            for path, timeout, code in (
                ("/test.Down/Call", 5.0, grpc.StatusCode.UNAVAILABLE),
                # No deadline of the caller's: the route's default timeout ends it, at the gateway.
                ("/test.Echo/SlowDefault", None, grpc.StatusCode.DEADLINE_EXCEEDED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(path)(b"", metadata=KEY, timeout=timeout)
                assert caught.value.code() == code
                assert as_dict(caught.value.initial_metadata())["x-request-id"] == "req-1"
                assert "x-request-id" not in as_dict(caught.value.trailing_metadata())
                assert gateway.ending().code == code.value[0]


async def test_upstream_trailers_only_goes_back_as_trailers_untouched(
    upstreams: Upstreams,
) -> None:
    direct = await raw(upstreams.test, grpc_request(FAIL, None), grpc_frame(b""))
    assert direct.headers["grpc-status"] == "5"  # the upstream answered trailers-only
    upstream_fields = {k: v for k, v in direct.headers.items() if k not in (":status", "content-type")}
    with started(upstreams, with_request_id) as gateway:
        reply = await raw(gateway.port, keyed(FAIL), grpc_frame(b""))
        assert reply.trailers == upstream_fields
        assert (reply.headers["x-request-id"], reply.headers["content-type"]) == ("req-1", "application/grpc")
        assert "grpc-status" not in reply.headers
        assert gateway.ending().code == grpc.StatusCode.NOT_FOUND.value[0]

        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(FAIL)(b"", metadata=KEY, timeout=5)
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "no such thing: 100% gone",
        )
        assert as_dict(caught.value.initial_metadata())["x-request-id"] == "req-1"
        trailers = as_dict(caught.value.trailing_metadata())
        assert trailers["fail-detail-bin"] == b"\x00\xff\x01"
        assert trailers["fail-note"] == "as sent"
        assert trailers["grpc-status-details-bin"] == b"\x08\x05\x12\x02no"

    with started(upstreams, without_reply_headers) as gateway:
        reply = await raw(gateway.port, keyed(FAIL), grpc_frame(b""))
        assert {k: v for k, v in reply.headers.items() if k not in (":status", "content-type")} == (
            upstream_fields
        )
        assert reply.trailers == {}


# --- the caller's headers ------------------------------------------------------------------------

TOO_MUCH_METADATA = re.compile(
    r"the call's metadata is (\d+) bytes, over the gateway's limit of 8192 bytes "
    r"\(\[limits\] max_metadata_bytes\)"
)


async def test_metadata_over_the_limit_is_resource_exhausted(upstreams: Upstreams) -> None:
    too_much = {
        "one large value": (*KEY, ("x-note", "n" * 9000)),
        "a key of 100 KB": (("x-api-key", "k" * 100_000),),
        "500 small headers": (*KEY, *((f"x-h{number}", "v") for number in range(500))),
    }
    with started(upstreams, max_metadata_bytes=8192) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            for name, metadata in too_much.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(ECHO)(b"", metadata=metadata, timeout=5)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, name
                matched = TOO_MUCH_METADATA.fullmatch(caught.value.details() or "")
                assert matched is not None, caught.value.details()
                assert int(matched[1]) > 8192
                ending = gateway.ending()
                assert (ending.token, ending.code) == (None, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
            assert not gateway.arrivals
            # Under the limit: Python decides.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(ECHO)(b"", metadata=(("x-api-key", "k" * 4096),), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(gateway.arrivals) == 1


async def test_a_bin_header_that_is_not_base64_is_invalid_argument(gateway: Gateway) -> None:
    reply = await raw(gateway.port, keyed(ECHO, (b"x-trace-bin", b"!!not*base64!!")), grpc_frame(b""))
    assert (reply.grpc_status, reply.grpc_message) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "metadata x-trace-bin is not base64: a -bin header carries base64-encoded bytes",
    )
    ending = gateway.ending()
    assert (ending.token, ending.code) == (None, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    # Padded, unpadded: both are base64.
    for value in (b"AAE=", b"AAE"):
        reply = await raw(gateway.port, keyed(ECHO, (b"x-trace-bin", value)), grpc_frame(b""))
        assert reply.grpc_status == 0
    assert [dict(arrival.metadata)["x-trace-bin"] for arrival in gateway.arrivals] == [b"\x00\x01"] * 2


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"soon", "soon"),
        (b"123456789S", "123456789S"),
        (b"10x", "10x"),
        (b"1.5S", "1.5S"),
        (b"9" * 100, "9" * 40 + "\u2026"),
    ],
)
async def test_a_malformed_grpc_timeout_is_internal(gateway: Gateway, value: bytes, shown: str) -> None:
    reply = await raw(gateway.port, keyed(ECHO, (b"grpc-timeout", value)), grpc_frame(b""))
    assert (reply.grpc_status, reply.grpc_message) == (
        grpc.StatusCode.INTERNAL.value[0],
        f"grpc-timeout '{shown}' is malformed: 1 to 8 digits and a unit (H, M, S, m, u, n)",
    )
    assert gateway.ending().token is None
    assert not gateway.arrivals


# --- compressed first messages -------------------------------------------------------------------

PAYLOAD = b"compress me, " * 50


async def test_a_compressed_first_message_reaches_python_inflated(gateway: Gateway) -> None:
    for encoding, compressed in ((b"gzip", gzip.compress(PAYLOAD)), (b"deflate", zlib.compress(PAYLOAD))):
        reply = await raw(
            gateway.port, keyed(ECHO, (b"grpc-encoding", encoding)), grpc_frame(compressed, compressed=True)
        )
        # The upstream got the compressed bytes as they came, inflated them itself, and echoed them.
        assert (reply.grpc_status, reply.data) == (0, grpc_frame(PAYLOAD)), reply
    assert [arrival.first for arrival in gateway.arrivals] == [PAYLOAD, PAYLOAD]
    # grpc's own client, compressing as it does.
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        echo = channel.unary_unary(ECHO)
        assert await echo(PAYLOAD, metadata=KEY, timeout=5, compression=grpc.Compression.Gzip) == PAYLOAD
    assert gateway.arrivals[-1].first == PAYLOAD


@pytest.mark.parametrize(
    ("encoding", "message", "status", "said"),
    [
        (
            b"gzip",
            gzip.compress(b"\x00" * (16 << 20)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the request message inflates to more than 65536 bytes ([limits] max_message_bytes)",
        ),
        (
            b"gzip",
            b"not gzip at all",
            grpc.StatusCode.INTERNAL,
            "the request message could not be decompressed (gzip): ",
        ),
        (
            None,
            gzip.compress(PAYLOAD),
            grpc.StatusCode.INTERNAL,
            "the request message is marked compressed but the call names no grpc-encoding",
        ),
        (
            b"identity",
            gzip.compress(PAYLOAD),
            grpc.StatusCode.INTERNAL,
            "the request message is marked compressed but the call names no grpc-encoding",
        ),
        (
            b"snappy",
            PAYLOAD,
            grpc.StatusCode.UNIMPLEMENTED,
            "grpc-encoding snappy is not supported here (gzip, deflate, identity)",
        ),
    ],
    ids=["gzip bomb", "corrupt gzip", "no encoding", "identity", "snappy"],
)
async def test_a_compressed_first_message_python_cannot_read_is_refused(
    upstreams: Upstreams, encoding: bytes | None, message: bytes, status: grpc.StatusCode, said: str
) -> None:
    upstreams.drain_seen()
    extra = () if encoding is None else ((b"grpc-encoding", encoding),)
    with started(upstreams, max_message_bytes=65536) as gateway:
        reply = await raw(gateway.port, keyed(ECHO, *extra), grpc_frame(message, compressed=True))
        assert reply.grpc_status == status.value[0], reply
        assert reply.grpc_message.startswith(said), reply.grpc_message
        if status == grpc.StatusCode.UNIMPLEMENTED:
            assert reply.headers["grpc-accept-encoding"] == "gzip,deflate,identity"
        ending = gateway.ending()
        assert (ending.token, ending.code) == (None, status.value[0])
        assert not gateway.arrivals
    assert not [record for record in upstreams.drain_seen() if record[0] == "Echo"]


async def test_without_reads_request_nothing_is_inflated(gateway: Gateway, upstreams: Upstreams) -> None:
    upstreams.drain_seen()
    gzip_headers = keyed(BLIND, (b"grpc-encoding", b"gzip"))
    reply = await raw(gateway.port, gzip_headers, grpc_frame(gzip.compress(PAYLOAD), compressed=True))
    assert (reply.grpc_status, reply.data) == (0, grpc_frame(PAYLOAD))
    # Corrupt: the gateway does not look; the upstream finds out.
    reply = await raw(gateway.port, gzip_headers, grpc_frame(b"not gzip at all", compressed=True))
    assert reply.grpc_status == grpc.StatusCode.INTERNAL.value[0]
    assert "could not be decompressed" not in reply.grpc_message
    assert [arrival.first for arrival in gateway.arrivals] == [None, None]
    assert [record[0] for record in upstreams.drain_seen()] == ["Blind"]


# --- retries -------------------------------------------------------------------------------------


async def flaky(
    channel: grpc.aio.Channel,
    key: str,
    fail: int,
    *,
    method: str = FLAKY,
    pushback: str | None = None,
    seconds: float = 5,
    request: bytes = b"again",
) -> bytes:
    """A Flaky call that fails UNAVAILABLE its first ``fail`` attempts (with ``pushback``)."""
    metadata: tuple[tuple[str, str], ...] = (*KEY, ("x-attempt-key", key), ("x-fail", str(fail)))
    if pushback is not None:
        metadata = (*metadata, ("x-pushback", pushback))
    reply: bytes = await channel.unary_unary(method)(request, metadata=metadata, timeout=seconds)
    return reply


def previous_attempts(records: list[Record]) -> list[str | bytes | None]:
    return [dict(metadata).get("grpc-previous-rpc-attempts") for _, metadata, _ in records]


async def test_unavailable_is_retried_on_the_next_address(gateway: Gateway, upstreams: Upstreams) -> None:
    upstreams.drain_seen()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        assert await flaky(channel, "retried-1", fail=1) == b"again"
    assert upstreams.attempts["retried-1"] == 2
    records = upstreams.drain_seen()
    assert sorted(method for method, _, _ in records) == ["Flaky@a", "Flaky@b"]  # round-robin
    assert previous_attempts(records) == [None, "1"]
    ending = gateway.ending()
    assert (ending.token, ending.code, ending.received, ending.sent) == ("token /test.Echo/Flaky", 0, 1, 1)
    assert len(gateway.arrivals) == 1  # Python decides once


async def test_retries_stop_after_max_attempts(upstreams: Upstreams) -> None:
    upstreams.drain_seen()
    with started(upstreams, with_request_id) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await flaky(channel, "retried-2", fail=10)
        # The last attempt's answer, as the upstream gave it.
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "try again")
        assert as_dict(caught.value.initial_metadata())["x-request-id"] == "req-1"
        assert upstreams.attempts["retried-2"] == 3
        assert previous_attempts(upstreams.drain_seen()) == [None, "1", "2"]
        assert gateway.ending().code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_a_method_without_a_policy_is_not_retried(gateway: Gateway, upstreams: Upstreams) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await flaky(channel, "once-1", fail=1, method="/test.Echo/FlakyOnce")
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "try again")
    assert upstreams.attempts["once-1"] == 1


async def test_pushback_and_the_deadline_bound_retries(gateway: Gateway, upstreams: Upstreams) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        # The server says when to come back.
        began = time.monotonic()
        assert await flaky(channel, "pushback-1", fail=1, pushback="300") == b"again"
        assert time.monotonic() - began >= 0.3
        assert upstreams.attempts["pushback-1"] == 2
        # ... or not to come back.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await flaky(channel, "pushback-2", fail=1, pushback="-1")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert upstreams.attempts["pushback-2"] == 1
        # A retry that would start past the deadline is not made: the failure comes back at once.
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await flaky(channel, "pushback-3", fail=1, pushback="2000", seconds=1.0)
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "try again")
        assert time.monotonic() - began < 0.9
        assert upstreams.attempts["pushback-3"] == 1


async def test_a_retried_request_over_the_limit_is_refused_before_any_attempt(upstreams: Upstreams) -> None:
    upstreams.drain_seen()
    with started(upstreams, max_message_bytes=64) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await flaky(channel, "large-1", fail=0, request=b"x" * 100)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details().startswith("the request message is 100 bytes, over the gateway's limit")
    assert upstreams.attempts["large-1"] == 0
    assert not upstreams.drain_seen()


# --- not a POST ----------------------------------------------------------------------------------


async def test_get_is_http_405_with_grpc_status_internal(gateway: Gateway) -> None:
    headers = [(b":method", b"GET") if name == b":method" else (name, value) for name, value in keyed(ECHO)]
    reply = await raw(gateway.port, headers)
    assert (reply.http_status, reply.grpc_status, reply.grpc_message) == (
        405,
        grpc.StatusCode.INTERNAL.value[0],
        "gRPC calls are POST, not GET",
    )
    assert gateway.ending().token is None
    assert not gateway.arrivals


async def test_a_pseudo_header_after_the_others_is_malformed_http2(gateway: Gateway) -> None:
    # RFC 9113, 8.3: pseudo-headers come first. h2 resets such a stream itself (PROTOCOL_ERROR): the
    # gateway never sees the request, whatever its method.
    headers = [*(item for item in keyed(ECHO) if item[0] != b":method"), (b":method", b"GET")]
    reply = await raw(gateway.port, headers)
    assert (reply.reset_code, reply.grpc_status) == (1, None)  # PROTOCOL_ERROR
    assert not gateway.arrivals


def test_a_method_takes_a_retry_policy_as_its_seventh_field() -> None:
    server = small_server()
    upstreams: dict[str, gateway_native.Upstream] = {"u": (["127.0.0.1:1"], None)}
    settings = ((0.0, 20.0, False), (0.05, 0.5))
    server.set_plan({"/a.B/C": ("u", "a.B", False, False, False, None)}, upstreams, *settings)
    server.set_plan({"/a.B/C": ("u", "a.B", False, False, False, None, None)}, upstreams, *settings)
    server.set_plan(
        {"/a.B/C": ("u", "a.B", False, False, False, 1.0, (9, 0.05, 1.0, 2.0))}, upstreams, *settings
    )
    for method, error in (
        (("u", "a.B", False, False, False), "method /a.B/C: a method is a tuple of 6 or 7 fields, not 5"),
        (
            ("u", "a.B", False, False, False, None, (0, 0.05, 1.0, 2.0)),
            "method /a.B/C: a retry policy's max_attempts must be at least 1, not 0",
        ),
        (
            ("u", "a.B", False, False, False, None, (3, 0.0, 1.0, 2.0)),
            "method /a.B/C: a retry policy's initial backoff must be more than 0 seconds, not 0",
        ),
    ):
        with pytest.raises(ValueError, match="^" + re.escape(error)):
            server.set_plan({"/a.B/C": method}, upstreams, *settings)  # type: ignore[dict-item]
    server.stop(0)
