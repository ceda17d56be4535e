"""A catalogue of hostile input thrown at one running gateway.

Each case sends something bad, asserts what the client gets back (a gRPC status and message, or
what happened on the wire when gRPC never got that far), and then that the gateway still serves a
normal call on a new connection. The gateway runs as a real process with small size limits
(64 KiB messages, 8 KiB metadata) and a rate-limit rule keyed by a request field, so that the
field-decoding path is exercised too. Everything talks to loopback and is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import h2.errors
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from shop.recommendations.v1 import recommendations_pb2
from shop.users.v1 import users_pb2

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.h2wire import Headers, Reply, exchange, flood, grpc_frame, grpc_request, send_raw
from tests.gateway.security_support import KEY, Started, gateway_process, get_user
from tests.support.processes import gateway_engine, stderr_text

HOSTILE_CONFIG = """
[[rate_limit.rules]]
rate = "100000/minute"
key = "field:user_id"

[auth]
# Many cases send invalid keys from this one address; the lockout has tests of its own.
max_failures = 0

[limits]
max_message_bytes = 65536
max_metadata_bytes = 8192
"""

GET_USER = f"/{USERS}/GetUser"
STREAM_RECOMMENDATIONS = f"/{RECOMMENDATIONS}/StreamRecommendations"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
KEYED = (("x-api-key", KEY),)
GARBAGE = b"\xff\xff\xff\xff\x0f\x00garbage"
NO_REPLY_WAIT = 1.0


def user(user_id: int) -> bytes:
    return users_pb2.GetUserRequest(user_id=user_id).SerializeToString()


def wanted(user_id: int) -> bytes:
    return recommendations_pb2.GetRecommendationsRequest(user_id=user_id).SerializeToString()


@dataclass(frozen=True)
class Seen:
    """What the client saw: a gRPC status code name, or what happened on the wire before gRPC."""

    status: str
    message: str = ""


Probe = Callable[[Started], Awaitable[Seen]]


@dataclass(frozen=True)
class Case:
    probe: Probe
    status: str
    message: str
    # A known gateway bug: the case states what the client should see, and is expected to fail.
    known_bug: str = ""
    # What the native engine answers where grpc's words or leniency are grpc's own: (status, message).
    # Its HTTP/2 layer (h2) holds requests to RFC 9113: a malformed header block is a protocol error
    # (PROTOCOL_ERROR), never handed to the gateway; the offending connection alone is closed.
    native: tuple[str, str] | None = None
    # Statuses that are as right as ``status``, where timing decides between them.
    also: tuple[str, ...] = ()


CASES: dict[str, Case] = {}


def case(
    name: str,
    status: str,
    message: str = "",
    known_bug: str = "",
    also: tuple[str, ...] = (),
    native: tuple[str, str] | None = None,
) -> Callable[[Probe], Probe]:
    """Register ``probe`` as a case whose client sees ``status`` and a message containing ``message``."""

    def register(probe: Probe) -> Probe:
        assert name not in CASES, name
        CASES[name] = Case(probe, status, message, known_bug, native=native, also=also)
        return probe

    return register


# --- how each case talks to the gateway ----------------------------------------------------------


async def call(
    gateway: Started,
    path: str,
    messages: Sequence[bytes],
    *,
    metadata: Sequence[tuple[str, str | bytes]] = KEYED,
    streaming: bool = False,
    seconds: float = 5,
) -> Seen:
    """A call through a real grpc client with raw bytes: unary-unary, or stream-stream if ``streaming``."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        try:
            if streaming:
                stream = channel.stream_stream(path)(iter(messages), metadata=metadata, timeout=seconds)
                async for _ in stream:
                    pass
            else:
                await channel.unary_unary(path)(messages[0], metadata=metadata, timeout=seconds)
        except grpc.aio.AioRpcError as error:
            return Seen(error.code().name, error.details() or "")
    return Seen("OK")


_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def on_the_wire(reply: Reply) -> Seen:
    if reply.grpc_status is not None:
        return Seen(_CODES[reply.grpc_status], reply.grpc_message)
    if reply.reset_code is not None:
        return Seen(f"RST_STREAM {h2.errors.ErrorCodes(reply.reset_code).name}")
    if reply.goaway_code is not None:
        return Seen(f"GOAWAY {h2.errors.ErrorCodes(reply.goaway_code).name}")
    return Seen("CONNECTION CLOSED" if reply.closed else "NO REPLY")


async def raw(
    gateway: Started,
    headers: Headers,
    body: bytes = b"",
    **options: Any,
) -> Seen:
    """A request over raw HTTP/2, as no gRPC client would send it."""
    options.setdefault("timeout", 5.0)
    return on_the_wire(await asyncio.to_thread(exchange, gateway.port, headers, body, **options))


def replace_header(headers: Headers, name: bytes, value: bytes | None) -> Headers:
    """``headers`` with ``name`` set to ``value``, or removed when ``value`` is None."""
    kept = [(key, old) for key, old in headers if key != name]
    return kept if value is None else [*kept, (name, value)]


# --- request messages ----------------------------------------------------------------------------


@case("garbage bytes as a request message", "INVALID_ARGUMENT", "is not a valid shop.users.v1.GetUserRequest")
async def _garbage_message(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [GARBAGE])


@case(
    "garbage bytes as the first message of a stream",
    "INVALID_ARGUMENT",
    "is not a valid shop.recommendations.v1.GetRecommendationsRequest",
)
async def _garbage_first_in_stream(gateway: Started) -> Seen:
    return await call(gateway, STREAM_RECOMMENDATIONS, [GARBAGE], streaming=True)


@case("garbage bytes after a valid first message", "UNKNOWN", "Error parsing message")
async def _garbage_later_in_stream(gateway: Started) -> Seen:
    # The gateway decodes only the first message (for the rate-limit key); the upstream's grpc fails
    # on the second, and its status comes back untouched.
    return await call(gateway, STREAM_RECOMMENDATIONS, [wanted(101), GARBAGE], streaming=True)


@case("user_id sent with the wrong wire type", "INVALID_ARGUMENT", "user_id")
async def _wrong_wire_type(gateway: Started) -> Seen:
    # Field 1 as a length-delimited string: protobuf keeps it as an unknown field, user_id stays 0.
    return await call(gateway, GET_USER, [b"\x0a\x03abc"])


@case("unknown fields in a request", "OK")
async def _unknown_fields(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101) + b"\xfa\x06\x05hello"])  # field 111, bytes


@case(
    "a message over the size limit",
    "RESOURCE_EXHAUSTED",
    "Received message larger than max",
    native=("RESOURCE_EXHAUSTED", "over the gateway's limit of 65536 bytes ([limits] max_message_bytes)"),
)
async def _oversized_message(gateway: Started) -> Seen:
    padding = b"\xfa\x06" + b"\x80\x80\x04" + b"x" * 65536  # field 111: 64 KiB of bytes
    return await call(gateway, GET_USER, [user(101) + padding])


@case(
    "a declared message length of 4 GiB",
    "RESOURCE_EXHAUSTED",
    "larger than max (4294967295 vs. 65536)",
    native=("RESOURCE_EXHAUSTED", "the request message is 4294967295 bytes, over the gateway's limit"),
)
async def _four_gib(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY), grpc_frame(user(101), length=0xFFFFFFFF))


@case("a gzip bomb: 16 KiB that inflate to 16 MiB", "RESOURCE_EXHAUSTED")
async def _gzip_bomb(gateway: Started) -> Seen:
    bomb = gzip.compress(b"\x00" * (16 * 1024 * 1024))
    headers = grpc_request(GET_USER, KEY, [(b"grpc-encoding", b"gzip")])
    return await raw(gateway, headers, grpc_frame(bomb, compressed=True))


@case(
    "corrupt gzip",
    "INTERNAL",
    "Decompression failed",
    native=("INTERNAL", "the request message could not be decompressed (gzip)"),
)
async def _corrupt_gzip(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"grpc-encoding", b"gzip")])
    return await raw(gateway, headers, grpc_frame(b"not gzip at all", compressed=True))


@case(
    "the compressed flag without a grpc-encoding",
    "INTERNAL",
    "Compression bit set but no encoding",
    native=("INTERNAL", "the request message is marked compressed but the call names no grpc-encoding"),
)
async def _compressed_flag(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY), grpc_frame(user(101), compressed=True))


@case(
    "an unknown grpc-encoding",
    "INTERNAL",
    "Error parsing 'grpc-encoding' metadata",
    native=("UNIMPLEMENTED", "grpc-encoding snappy is not supported here (gzip, deflate, identity)"),
)
async def _unknown_encoding(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"grpc-encoding", b"snappy")])
    return await raw(gateway, headers, grpc_frame(user(101), compressed=True))


@case("two messages on a unary call", "OK")
async def _two_messages(gateway: Started) -> Seen:
    # grpc reads the first and ignores the rest; the call is answered once.
    return await raw(gateway, grpc_request(GET_USER, KEY), grpc_frame(user(101)) * 2)


@case("half a message, then the end of the stream", "NO REPLY")
async def _half_then_end(gateway: Started) -> Seen:
    # grpc.aio's server never answers a unary call whose request ends early (it waits for the caller
    # to give up), and the native engine hands the bytes on as they are, to an upstream that does the
    # same; the stream is freed when the connection closes.
    frame = grpc_frame(user(101), length=100)
    return await raw(gateway, grpc_request(GET_USER, KEY), frame, timeout=NO_REPLY_WAIT)


@case("headers only, no message, on a unary method", "NO REPLY")
async def _no_message(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY), timeout=NO_REPLY_WAIT)


@case("half a message, then a disconnect", "DISCONNECTED")
async def _half_then_disconnect(gateway: Started) -> Seen:
    frame = grpc_frame(user(101), length=100)
    await raw(gateway, grpc_request(GET_USER, KEY), frame, end_stream=False, disconnect=True)
    return Seen("DISCONNECTED")


# --- metadata ------------------------------------------------------------------------------------

METADATA_TOO_LARGE = "received metadata size exceeds hard limit"
NATIVE_METADATA_TOO_LARGE = (
    "RESOURCE_EXHAUSTED",
    "over the gateway's limit of 8192 bytes ([limits] max_metadata_bytes)",
)
# A header block RFC 9113 calls malformed: the native engine's HTTP/2 layer ends the connection.
MALFORMED = ("GOAWAY PROTOCOL_ERROR", "")


@case(
    "metadata over the size limit", "RESOURCE_EXHAUSTED", METADATA_TOO_LARGE, native=NATIVE_METADATA_TOO_LARGE
)
async def _big_metadata(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(*KEYED, ("x-note", "n" * 9000)))


@case("an x-api-key of 100 KB", "RESOURCE_EXHAUSTED", METADATA_TOO_LARGE, native=NATIVE_METADATA_TOO_LARGE)
async def _huge_key(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(("x-api-key", "k" * 100_000),))


@case("an x-api-key of 4 KB, under the limit", "UNAUTHENTICATED", "invalid API key")
async def _long_key(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(("x-api-key", "k" * 4096),))


@case("500 small headers", "RESOURCE_EXHAUSTED", native=NATIVE_METADATA_TOO_LARGE)
async def _many_headers(gateway: Started) -> Seen:
    headers = tuple((f"x-h{number}", "v") for number in range(500))
    return await call(gateway, GET_USER, [user(101)], metadata=(*KEYED, *headers))


NOT_PRINTABLE = "has a value that is not printable ASCII; send binary values in a -bin header"


@case("non-ASCII (UTF-8) in a metadata value", "INVALID_ARGUMENT", f"metadata x-note {NOT_PRINTABLE}")
async def _utf8_value(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"x-note", "ключ".encode())])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case("bytes that are not UTF-8 in a metadata value", "INVALID_ARGUMENT", f"metadata x-note {NOT_PRINTABLE}")
async def _latin1_value(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY, [(b"x-note", b"\xff\xfe")]), grpc_frame(user(101)))


@case(
    "a NUL byte in a metadata value",
    "INVALID_ARGUMENT",
    f"metadata x-note {NOT_PRINTABLE}",
    native=MALFORMED,
)
async def _nul_value(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY, [(b"x-note", b"a\x00b")]), grpc_frame(user(101)))


@case(
    "CR LF in a metadata value (header injection)",
    "INVALID_ARGUMENT",
    f"metadata x-note {NOT_PRINTABLE}",
    native=MALFORMED,
)
async def _crlf_value(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"x-note", b"a\r\nx-client-id: admin")])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case(
    "a control character in the API key",
    "INVALID_ARGUMENT",
    f"metadata x-api-key {NOT_PRINTABLE}",
    native=MALFORMED,
)
async def _control_in_key(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, "secret\x07key"), grpc_frame(user(101)))


@case("an upper-case header name", "INTERNAL", "Illegal header key: X-Api-Key", native=MALFORMED)
async def _upper_case_name(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, None, [(b"X-Api-Key", KEY.encode())])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case("a pseudo-header after the regular ones", "INTERNAL", "Illegal header key: :foo", native=MALFORMED)
async def _late_pseudo_header(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, KEY, [(b":foo", b"bar")]), grpc_frame(user(101)))


@case("50 x-api-key values in one call", "UNAUTHENTICATED", "more than one x-api-key value; send exactly one")
async def _many_keys(gateway: Started) -> Seen:
    keys = tuple(("x-api-key", f"guess-{number}") for number in range(50))
    return await call(gateway, GET_USER, [user(101)], metadata=keys)


@case("two x-api-key values, one of them valid", "UNAUTHENTICATED", "more than one x-api-key value")
async def _two_keys(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(("x-api-key", "guess"), *KEYED))


@case("an empty x-api-key", "UNAUTHENTICATED", "invalid API key")
async def _empty_key(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(("x-api-key", ""),))


@case("the right key with spaces around it", "UNAUTHENTICATED", "invalid API key")
async def _padded_key(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(GET_USER, f" {KEY} "), grpc_frame(user(101)))


@case("the key in a -bin header where text is expected", "UNAUTHENTICATED", "missing x-api-key metadata")
async def _binary_key(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(101)], metadata=(("x-api-key-bin", KEY.encode()),))


@case(
    "a -bin header that is not base64",
    "INTERNAL",
    "Error parsing 'x-trace-bin' metadata",
    native=("INVALID_ARGUMENT", "metadata x-trace-bin is not base64"),
)
async def _bad_base64(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"x-trace-bin", b"!!not*base64!!")])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case(
    "an invalid grpc-timeout",
    "INTERNAL",
    "Error parsing 'grpc-timeout' metadata",
    native=("INTERNAL", "grpc-timeout 'soon' is malformed"),
)
async def _bad_timeout(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"grpc-timeout", b"soon")])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case("a deadline of one microsecond", "DEADLINE_EXCEEDED", also=("OK",))
async def _tiny_deadline(gateway: Started) -> Seen:
    # grpc keeps deadlines to the millisecond, rounded up: a call given 1 µs may be answered,
    # through the gateway and the service, before grpc's clock says its time is up.
    return await call(gateway, GET_USER, [user(101)], seconds=0.000001)


@case("a grpc-timeout of 2,562,047 hours (math.MaxInt64 ns)", "OK")
async def _huge_timeout(gateway: Started) -> Seen:
    # grpc's server takes the deadline as it is; forwarded unchanged, it breaks the upstream call.
    headers = grpc_request(GET_USER, KEY, [(b"grpc-timeout", b"2562047H")])
    return await raw(gateway, headers, grpc_frame(user(101)))


@case("a grpc-timeout of 99,999,999 hours (the most it can say)", "OK")
async def _longest_timeout(gateway: Started) -> Seen:
    headers = grpc_request(GET_USER, KEY, [(b"grpc-timeout", b"99999999H")])
    return await raw(gateway, headers, grpc_frame(user(101)))


# --- request values ------------------------------------------------------------------------------


@case("a negative user_id", "INVALID_ARGUMENT", "user_id")
async def _negative_user(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(-1)])


@case("a zero user_id", "INVALID_ARGUMENT", "user_id")
async def _zero_user(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(0)])


@case("the largest user_id", "NOT_FOUND", "user 2147483647 not found")
async def _huge_user(gateway: Started) -> Seen:
    return await call(gateway, GET_USER, [user(2**31 - 1)])


@case("a 64-bit value in the 32-bit user_id", "INVALID_ARGUMENT", "user_id")
async def _int64_user(gateway: Started) -> Seen:
    # Varint 2**40: protobuf truncates it to 32 bits, leaving 0, and the upstream refuses 0.
    return await call(gateway, GET_USER, [b"\x08\x80\x80\x80\x80\x80\x20"])


@case("the rate-limit key field missing from the message", "INVALID_ARGUMENT", "user_id")
async def _missing_field(gateway: Started) -> Seen:
    # No user_id: the budget is the client's, and the upstream refuses the empty request.
    return await call(gateway, GET_USER, [b""])


# --- routing -------------------------------------------------------------------------------------


@case(
    "an unknown service", "UNIMPLEMENTED", "service shop.orders.v1.OrderService is not routed by this gateway"
)
async def _unknown_service(gateway: Started) -> Seen:
    return await call(gateway, "/shop.orders.v1.OrderService/GetOrder", [b""])


@case(
    "an unknown method of a routed service",
    "UNIMPLEMENTED",
    f"method DeleteUser is not a method of {USERS} (it has: GetUser, ListUsers)",
)
async def _unknown_method(gateway: Started) -> Seen:
    return await call(gateway, f"/{USERS}/DeleteUser", [user(101)])


@case(
    "a path without slashes",
    "UNIMPLEMENTED",
    "service garbage is not routed",
    native=("RST_STREAM PROTOCOL_ERROR", ""),  # RFC 9113: a :path of a POST starts with "/"
)
async def _bad_path(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request("garbage", KEY), grpc_frame(b""))


@case("a 6 KB path", "UNIMPLEMENTED", "is not routed by this gateway")
async def _long_path(gateway: Started) -> Seen:
    return await raw(gateway, grpc_request(f"/{'a' * 6000}/M", KEY), grpc_frame(b""))


@case("no :path at all", "RST_STREAM INTERNAL_ERROR", native=("RST_STREAM PROTOCOL_ERROR", ""))
async def _no_path(gateway: Started) -> Seen:
    return await raw(
        gateway, replace_header(grpc_request(GET_USER, KEY), b":path", None), grpc_frame(user(101))
    )


# --- HTTP/2 and HTTP/1 that is not gRPC ----------------------------------------------------------


# The probe moves :method after the regular headers: RFC 9113 calls that malformed, and the native
# engine's HTTP/2 layer resets the stream (a well-formed GET gets HTTP 405: tests/native).
@case("GET instead of POST", "RST_STREAM INTERNAL_ERROR", native=("RST_STREAM PROTOCOL_ERROR", ""))
async def _get(gateway: Started) -> Seen:
    return await raw(gateway, replace_header(grpc_request(GET_USER, KEY), b":method", b"GET"))


# grpc core insists on te: trailers; the native engine serves the call, as grpc-go does.
@case("no te: trailers", "RST_STREAM INTERNAL_ERROR", native=("OK", ""))
async def _no_te(gateway: Started) -> Seen:
    return await raw(gateway, replace_header(grpc_request(GET_USER, KEY), b"te", None), grpc_frame(user(101)))


# The native engine answers as the gRPC spec asks (HTTP 415 and a gRPC status), as grpc-go does.
@case(
    "a content-type that is not gRPC",
    "OK",
    native=("INTERNAL", 'invalid gRPC request content-type "text/html"'),
)
async def _wrong_content_type(gateway: Started) -> Seen:
    # grpc core serves it (it looks at :method, :path and te); the upstream gets application/grpc.
    headers = replace_header(grpc_request(GET_USER, KEY), b"content-type", b"text/html")
    return await raw(gateway, headers, grpc_frame(user(101)))


@case("HTTP/1.1 to the gRPC port", "CONNECTION CLOSED", "no HTTP/1.1 reply")
async def _http1(gateway: Started) -> Seen:
    request = b"POST /shop.users.v1.UserService/GetUser HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    received = await asyncio.to_thread(send_raw, gateway.port, request)
    return Seen(
        "CONNECTION CLOSED", "an HTTP/1.1 reply" if received.startswith(b"HTTP/1") else "no HTTP/1.1 reply"
    )


@case("garbage instead of the HTTP/2 preface", "CONNECTION CLOSED")
async def _bad_preface(gateway: Started) -> Seen:
    await asyncio.to_thread(send_raw, gateway.port, bytes(range(256)) * 4)
    return Seen("CONNECTION CLOSED")


@case("rapid reset: 1,000 streams opened and reset at once", "SURVIVED")
async def _rapid_reset(gateway: Started) -> Seen:
    reply = await asyncio.to_thread(flood, gateway.port, 1000, headers=grpc_request(GET_USER, KEY))
    # grpc may answer with a GOAWAY or simply carry on; either way the next case checks it serves.
    return Seen("SURVIVED", "" if reply.goaway_code is None else h2.errors.ErrorCodes(reply.goaway_code).name)


@case("a flood of 10,000 PINGs", "SURVIVED")
async def _ping_flood(gateway: Started) -> Seen:
    await asyncio.to_thread(flood, gateway.port, 10_000)
    return Seen("SURVIVED")


@case("1,000 streams opened and abandoned", "CANCELLED")
async def _abandoned_streams(gateway: Started) -> Seen:
    channel = grpc.aio.insecure_channel(gateway.address)
    streams = [channel.stream_stream(STREAM_RECOMMENDATIONS)(metadata=KEYED, timeout=20) for _ in range(1000)]
    # Each stream gets through to the upstream (one reply each), then the client walks away.
    await asyncio.gather(*(stream.write(wanted(101)) for stream in streams))
    await asyncio.gather(*(stream.read() for stream in streams))
    await channel.close(grace=None)
    codes = {(await stream.code()).name for stream in streams}
    return Seen(", ".join(sorted(codes)))


# --- reflection ----------------------------------------------------------------------------------


async def _reflect(gateway: Started, request: reflection_pb2.ServerReflectionRequest) -> Seen:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stream = channel.stream_stream(REFLECTION)(metadata=KEYED, timeout=5)
        await stream.write(request.SerializeToString())
        reply = reflection_pb2.ServerReflectionResponse.FromString(await stream.read())
        await stream.done_writing()
    error = reply.error_response
    return Seen(grpc.StatusCode(_status_of(error.error_code)).name, error.error_message)


def _status_of(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


@case("reflection for an unknown symbol", "NOT_FOUND", "not found")
async def _unknown_symbol(gateway: Started) -> Seen:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="shop.nope.v1.Nothing")
    return await _reflect(gateway, request)


@case("reflection for an unknown file", "NOT_FOUND", "not found")
async def _unknown_file(gateway: Started) -> Seen:
    return await _reflect(
        gateway, reflection_pb2.ServerReflectionRequest(file_by_filename="../../etc/passwd")
    )


@case("reflection with garbage bytes", "UNKNOWN", "Error parsing message")
async def _reflection_garbage(gateway: Started) -> Seen:
    return await call(gateway, REFLECTION, [GARBAGE], streaming=True)


@case("reflection without a key", "OK", "")
async def _reflection_without_key(gateway: Started) -> Seen:
    # Answered, for what needs no key (test_operations_probes.py checks what it describes). On the
    # wire: grpc's aio client, still writing when a bidi call ends, may report "Internal error from
    # Core" instead of the status it received.
    request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    return await raw(gateway, grpc_request(REFLECTION, key=None), grpc_frame(request))


# --- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_gateway(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    config = write_config(
        tmp_path_factory.mktemp("hostile"), gateway_toml(services.routes, rules=HOSTILE_CONFIG)
    )
    with gateway_process(config) as started:
        yield started


@pytest.fixture
async def still_serving(hostile_gateway: Started) -> AsyncIterator[Started]:
    yield hostile_gateway
    assert hostile_gateway.process.poll() is None, "the gateway exited"
    # Generous: a busy machine may take a while; a gateway that stopped serving never answers.
    served = await get_user(hostile_gateway.address, user_id=101, seconds=15)
    assert served.code == grpc.StatusCode.OK, served


def test_the_catalogue_covers_at_least_30_inputs() -> None:
    assert len(CASES) >= 30


def _params() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.xfail(reason=case.known_bug, strict=True)])
        if case.known_bug
        else pytest.param(name, id=name)
        for name, case in CASES.items()
    ]


@pytest.mark.parametrize("name", _params())
async def test_hostile_input(name: str, still_serving: Started) -> None:
    expected = CASES[name]
    status, message = expected.status, expected.message
    if expected.native is not None and gateway_engine() == "native":
        status, message = expected.native
    seen = await asyncio.wait_for(expected.probe(still_serving), timeout=20)
    if seen.status in expected.also:
        return
    assert (seen.status, message in seen.message) == (status, True), seen
    assert KEY not in seen.message  # a key is never echoed


# grpc itself logs these, with a traceback, while answering the cases above as asserted there: a
# metadata value that is not UTF-8 (it then reads it as Latin-1), and a reflection request that does
# not parse (UNKNOWN). Nothing of the gateway's own is among them.
GRPC_OWN_ERRORS = (
    "grpc._cython.cygrpc Invalid encoding on ",
    "grpc._cython.cygrpc Unexpected [DecodeError] raised by servicer method "
    "[/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo]",
)


def test_nothing_crashed_on_the_way(hostile_gateway: Started) -> None:
    """Runs last: every case was answered by design, none by an exception escaping a handler."""
    errors = [
        f"{entry.get('logger')} {entry.get('message')}: {entry['exception'].splitlines()[-1]}"
        for entry in _log_entries(stderr_text(hostile_gateway.process))
        if "exception" in entry
    ]
    crashes = [error for error in errors if not error.startswith(GRPC_OWN_ERRORS)]
    assert crashes == [], "\n".join(crashes)


def _log_entries(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries
