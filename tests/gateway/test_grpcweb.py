"""gRPC-Web on the HTTP door, byte by byte, and CORS: through a real gateway process (both engines)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from shop.users.v1 import users_pb2

from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.grpcweb_support import BINARY, TEXT, WebReply, frame, parse
from tests.gateway.ops_support import gateway as metered_gateway
from tests.gateway.ops_support import value, wait_for
from tests.gateway.test_http_door import KEY, Doors, http_gateway
from tests.gateway.upstream_double import (
    BREAKS_OFF,
    ECHO,
    FAIL_WITH_DETAILS,
    LARGE,
    LARGE_NAME_BYTES,
    SLOW,
    Recorder,
    start_upstream,
)
from tests.support.processes import free_port

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

GET_USER = "/shop.users.v1.UserService/GetUser"
LIST_USERS = "/shop.users.v1.UserService/ListUsers"
CORS = """
[http.cors]
allow_origins = ["http://127.0.0.1:*", "https://*.shop.example"]
allow_headers = ["x-tenant"]
max_age = 120
"""
PAGE = "http://127.0.0.1:5173"
WEB = {**KEY, "content-type": BINARY, "x-grpc-web": "1"}


def get_user(user_id: int) -> bytes:
    return frame(users_pb2.GetUserRequest(user_id=user_id).SerializeToString())


@pytest.fixture
def doors(services: Services, tmp_path: Path) -> Iterator[Doors]:
    """The real services behind the reference rule (5 calls per user per 30 s), CORS for loopback pages."""
    with http_gateway(write_config(tmp_path, gateway_toml(services.routes) + "\n[http]\n" + CORS)) as started:
        yield started


@pytest.fixture
async def web(doors: Doors) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=doors.http, timeout=10) as client:
        yield client


async def call(
    web: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str] | None = None
) -> WebReply:
    return parse(await web.post(path, content=body, headers=WEB if headers is None else headers))


def assert_trailers_only(reply: WebReply, code: int) -> None:
    """The status in the headers and in the body's only frame, a trailer frame: every client reads one;
    the other trailers in the headers only (a client that merges both would read them twice)."""
    assert reply.status == 200
    assert reply.frame_flags == [0x80]
    assert reply.code == code
    assert reply.headers["grpc-status"] == str(code)
    assert set(reply.trailers) <= {"grpc-status", "grpc-message", "grpc-status-details-bin"}
    for name, text in reply.trailers.items():
        assert reply.headers[name] == text


async def test_unary(web: httpx.AsyncClient) -> None:
    reply = await call(web, GET_USER, get_user(101), {**WEB, "x-request-id": "web-1"})
    assert reply.status == 200
    assert reply.headers["content-type"] == BINARY
    assert reply.frame_flags == [0x00, 0x80]
    assert users_pb2.User.FromString(reply.messages[0]) == users_pb2.User(
        user_id=101, name="Atul", segment="premium"
    )
    assert reply.trailers == {"grpc-status": "0"}
    assert reply.headers["x-request-id"] == "web-1"
    assert reply.headers["x-ratelimit-remaining"] == "4"
    assert "grpc-status" not in reply.headers  # not trailers-only: the status is in the body


async def test_server_streaming(web: httpx.AsyncClient) -> None:
    request = frame(users_pb2.ListUsersRequest(segment="premium").SerializeToString())
    reply = await call(web, LIST_USERS, request)
    assert [users_pb2.User.FromString(message).name for message in reply.messages] == ["Atul", "Aman"]
    assert reply.frame_flags == [0x00, 0x00, 0x80]
    assert reply.code == 0


async def test_an_error_before_any_message_is_trailers_only(web: httpx.AsyncClient) -> None:
    reply = await call(web, GET_USER, get_user(999))
    assert_trailers_only(reply, 5)
    assert reply.message == "user 999 not found"


async def test_refusals_are_trailers_only_with_their_headers(web: httpx.AsyncClient) -> None:
    missing = await call(web, GET_USER, get_user(102), {"content-type": BINARY})
    assert_trailers_only(missing, 16)
    assert missing.message == "missing x-api-key metadata"
    codes = [(await call(web, GET_USER, get_user(102))).code for _ in range(5)]
    assert codes == [0] * 5
    refused = await call(web, GET_USER, get_user(102))
    assert_trailers_only(refused, 8)
    assert refused.message.startswith("rate limit exceeded for user_id 102: 5 per 30 seconds, retry in ")
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining"] == "0"
    status = status_pb2.Status.FromString(base64.b64decode(refused.headers["grpc-status-details-bin"]))
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert 0 < retry.retry_delay.seconds <= 30


async def test_one_budget_across_doors(web: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await call(web, GET_USER, get_user(103))).code == 0
    for _ in range(3):
        assert (await web.get("/v1/users/103", headers=KEY)).status_code == 200
    assert (await call(web, GET_USER, get_user(103))).code == 8
    assert (await web.get("/v1/users/103", headers=KEY)).status_code == 429


async def test_text_mode_with_a_chunked_body(web: httpx.AsyncClient) -> None:
    encoded = base64.b64encode(get_user(104))

    async def chunks() -> AsyncIterator[bytes]:
        # Cut anywhere, even inside a base64 quantum: sent with Transfer-Encoding: chunked.
        for start in range(0, len(encoded), 3):
            yield encoded[start : start + 3]

    headers = {**KEY, "content-type": TEXT, "accept": TEXT}
    raw = await web.post(GET_USER, content=chunks(), headers=headers)
    assert raw.headers["content-type"] == "application/grpc-web-text+proto"
    reply = parse(raw)
    assert users_pb2.User.FromString(reply.messages[0]).name == "Sean"
    assert reply.code == 0
    # Each frame is encoded on its own, so padding may end each of them.
    trailers = frame(b"grpc-status: 0\r\n", 0x80)
    assert raw.content == base64.b64encode(frame(reply.messages[0])) + base64.b64encode(trailers)


async def test_text_mode_takes_padding_inside_the_body(web: httpx.AsyncClient) -> None:
    padded = base64.b64encode(get_user(101)[:4]) + b"\r\n" + base64.b64encode(get_user(101)[4:])
    assert b"=" in padded[:-4]
    reply = await call(web, GET_USER, padded, {**KEY, "content-type": TEXT + "+proto"})
    assert users_pb2.User.FromString(reply.messages[0]).name == "Atul"


async def test_the_reply_mode_follows_accept(web: httpx.AsyncClient) -> None:
    raw = await web.post(GET_USER, content=get_user(101), headers={**WEB, "accept": TEXT})
    assert raw.headers["content-type"] == "application/grpc-web-text+proto"
    reply = parse(raw)
    assert reply.code == 0, reply.message
    assert users_pb2.User.FromString(reply.messages[0]).name == "Atul"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00\x00", "the frame at byte 0 is cut short: 3 bytes of a 5-byte header"),
        (b"\x00\x00\x00\x00\x09ab", "the frame at byte 0 says 9 bytes but 2 follow"),
        (b"\x01\x00\x00\x00\x02\x08\x01", "has flag 0x01 (compressed)"),
        (b"\x80\x00\x00\x00\x00", "has flag 0x80 (a trailer frame)"),
        (b"", "the call ended without a whole request message; GetUser takes exactly one"),
        (frame(b"\x08\x01") * 2, "GetUser takes exactly one request message; the body holds 2"),
        (frame(b"\xff\xff"), "the request is not a valid shop.users.v1.GetUserRequest message"),
    ],
)
async def test_a_malformed_request_is_invalid_argument(
    web: httpx.AsyncClient, body: bytes, message: str
) -> None:
    reply = await asyncio.wait_for(call(web, GET_USER, body), 5)
    assert_trailers_only(reply, 3)
    assert message in reply.message


async def test_a_body_that_is_not_base64_is_invalid_argument(web: httpx.AsyncClient) -> None:
    reply = await call(web, GET_USER, b"AAAA*AAA", {**KEY, "content-type": TEXT})
    assert_trailers_only(reply, 3)
    assert reply.message.startswith("the text-mode body is not base64")
    assert (await call(web, GET_USER, get_user(101))).code == 0  # and the door goes on serving


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/shop.recommendations.v1.RecommendationService/RecommendForGroup", "client streaming"),
        ("/shop.recommendations.v1.RecommendationService/StreamRecommendations", "bidirectional streaming"),
    ],
)
async def test_streamed_requests_are_unimplemented(web: httpx.AsyncClient, path: str, kind: str) -> None:
    reply = await call(web, path, get_user(101))
    assert_trailers_only(reply, 12)
    assert f"is {kind}: browsers cannot stream requests over gRPC-Web" in reply.message


async def test_what_is_not_served(web: httpx.AsyncClient) -> None:
    unrouted = await call(web, "/shop.orders.v1.OrderService/GetOrder", get_user(101))
    assert_trailers_only(unrouted, 12)
    assert unrouted.message == "service shop.orders.v1.OrderService is not routed by this gateway"
    json_codec = await call(web, GET_USER, b"{}", {**KEY, "content-type": "application/grpc-web+json"})
    assert_trailers_only(json_codec, 12)
    assert "application/grpc-web+json is not served" in json_codec.message
    # Any other POST is still the HTTP/JSON door's.
    plain = await web.post(
        "/v1/recommendations:group",
        content=b'{"user_id": 101}',
        headers={**KEY, "content-type": "text/plain"},
    )
    assert plain.json()["userIds"] == [101]


async def test_calls_are_counted_by_door(services: Services, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, gateway_toml(services.routes) + "\n[http]\n")
    with metered_gateway(config, "--http-listen", f"127.0.0.1:{port}", metrics=True) as started:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as web:
            assert (await call(web, GET_USER, get_user(101))).code == 0
            assert (await call(web, GET_USER, get_user(101), {"content-type": BINARY})).code == 16
        labels = {"service": USERS, "method": "GetUser", "door": "grpc-web"}
        calls = "grpc_gateway_calls_total"
        await wait_for(
            lambda: value(started.scrape(), calls, **labels, code="UNAUTHENTICATED") == 1, what="counted"
        )
        assert value(started.scrape(), calls, **labels, code="OK") == 1
        assert value(started.scrape(), calls, **{**labels, "door": "http"}, code="OK") == 0


# Against an upstream the test controls: metadata, details, large messages, flushing, cancelling.


@pytest.fixture
async def controlled(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Recorder]]:
    recorder = Recorder()
    server, port = await start_upstream(recorder)
    config = write_config(tmp_path, gateway_toml({USERS: f"127.0.0.1:{port}"}, rules="") + "\n[http]\n")
    try:
        with http_gateway(config) as doors:
            async with httpx.AsyncClient(base_url=doors.http, timeout=10) as client:
                yield client, recorder
    finally:
        await server.stop(None)


async def test_metadata_both_ways(controlled: tuple[httpx.AsyncClient, Recorder]) -> None:
    web, recorder = controlled
    reply = await call(web, GET_USER, get_user(ECHO), {**WEB, "x-tenant": "acme", "x-blob-bin": "/wA="})
    assert reply.code == 0
    received = recorder.metadata[-1]
    assert (received["x-tenant"], received["x-blob-bin"], received["x-client-id"]) == (
        "acme",
        b"\xff\x00",
        "demo",
    )
    assert "x-api-key" not in received
    assert reply.headers["x-upstream-header"] == "hello"
    assert reply.trailers["x-upstream-trailer"] == "bye"
    assert base64.b64decode(reply.trailers["x-trace-bin"]) == b"\x00\x01"


async def test_rich_details_pass_through(controlled: tuple[httpx.AsyncClient, Recorder]) -> None:
    web, _ = controlled
    reply = await call(web, GET_USER, get_user(FAIL_WITH_DETAILS))
    assert_trailers_only(reply, 9)
    assert reply.message == "user 2 is locked"
    assert reply.headers["x-why"] == "locked"
    for details in (reply.headers["grpc-status-details-bin"], reply.trailers["grpc-status-details-bin"]):
        status = status_pb2.Status.FromString(base64.b64decode(details))
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (status.message, info.reason) == ("user 2 is locked", "USER_LOCKED")


async def test_an_error_after_the_first_message_is_the_last_frame(
    controlled: tuple[httpx.AsyncClient, Recorder],
) -> None:
    web, _ = controlled
    request = frame(users_pb2.ListUsersRequest(segment=BREAKS_OFF).SerializeToString())
    reply = await call(web, LIST_USERS, request)
    assert reply.frame_flags == [0x00, 0x80]
    assert users_pb2.User.FromString(reply.messages[0]).name == "user 1"
    assert (reply.code, reply.message) == (10, "the listing broke off")
    assert "grpc-status" not in reply.headers


async def test_one_mebibyte_messages_both_ways(controlled: tuple[httpx.AsyncClient, Recorder]) -> None:
    web, _ = controlled
    # An unknown field of 1 MiB rides along: the gateway forwards bytes, the upstream skips it.
    padding = b"\x7a" + _varint(LARGE_NAME_BYTES) + b"p" * LARGE_NAME_BYTES  # field 15, bytes
    request = frame(users_pb2.GetUserRequest(user_id=LARGE).SerializeToString() + padding)
    for headers in (WEB, {**KEY, "content-type": TEXT}):
        body = request if headers is WEB else base64.b64encode(request)
        reply = await call(web, GET_USER, body, headers)
        assert reply.code == 0
        assert len(users_pb2.User.FromString(reply.messages[0]).name) == LARGE_NAME_BYTES
    over = await call(web, GET_USER, frame(b"\x7a" + _varint(5 << 20) + b"p" * (5 << 20)))
    assert_trailers_only(over, 8)
    assert "over 4194309 bytes" in over.message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_each_streamed_message_is_flushed_as_it_arrives(
    controlled: tuple[httpx.AsyncClient, Recorder],
) -> None:
    web, recorder = controlled
    request = frame(users_pb2.ListUsersRequest().SerializeToString())
    async with web.stream("POST", LIST_USERS, content=request, headers=WEB) as reply:
        # The upstream's ListUsers never ends: frames can only arrive if each is sent as it comes.
        received = b""
        started = time.monotonic()
        chunks = reply.aiter_raw()
        while received.count(b"user ") < 2:
            received += await asyncio.wait_for(anext(chunks), 5)
            assert time.monotonic() - started < 5
    await asyncio.wait_for(recorder.cancelled.wait(), 5)  # the client left: the upstream call is cancelled


async def test_a_deadline_and_a_client_that_leaves(controlled: tuple[httpx.AsyncClient, Recorder]) -> None:
    web, recorder = controlled
    late = await call(web, GET_USER, get_user(SLOW), {**WEB, "grpc-timeout": "200m"})
    assert_trailers_only(late, 4)
    recorder.cancelled.clear()
    with pytest.raises(httpx.ReadTimeout):
        await web.post(GET_USER, content=get_user(SLOW), headers=WEB, timeout=0.5)
    await asyncio.wait_for(recorder.cancelled.wait(), 5)


# CORS.


async def test_a_preflight_needs_no_key(web: httpx.AsyncClient) -> None:
    asked = {
        "origin": PAGE,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-api-key,x-grpc-web,x-user-agent",
    }
    reply = await web.options(GET_USER, headers=asked)
    assert reply.status_code == 204
    assert reply.headers["access-control-allow-origin"] == PAGE
    allowed = reply.headers["access-control-allow-headers"].split(", ")
    assert {"content-type", "x-api-key", "x-grpc-web", "x-user-agent", "authorization", "x-tenant"} <= set(
        allowed
    )
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert reply.headers["access-control-max-age"] == "120"
    subdomain = await web.options("/v1/users/101", headers={**asked, "origin": "https://app.shop.example"})
    assert subdomain.headers["access-control-allow-origin"] == "https://app.shop.example"


async def test_replies_to_an_allowed_origin_expose_the_status(web: httpx.AsyncClient) -> None:
    reply = await web.post(GET_USER, content=get_user(101), headers={**WEB, "origin": PAGE})
    assert reply.headers["access-control-allow-origin"] == PAGE
    exposed = reply.headers["access-control-expose-headers"].split(", ")
    assert exposed == [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
        "x-request-id",
    ]
    json_reply = await web.get("/v1/users/101", headers={**KEY, "origin": PAGE})
    assert json_reply.headers["access-control-allow-origin"] == PAGE


async def test_a_disallowed_origin_gets_no_cors_headers(web: httpx.AsyncClient) -> None:
    for origin in ("https://evil.example", "http://127.0.0.2:5173", "https://shop.example"):
        preflight = await web.options(
            GET_USER, headers={"origin": origin, "access-control-request-method": "POST"}
        )
        assert preflight.status_code == 403
        reply = await web.post(GET_USER, content=get_user(101), headers={**WEB, "origin": origin})
        for response in (preflight, reply):
            assert not [name for name in response.headers if name.startswith("access-control-")]


async def test_cors_is_off_by_default(controlled: tuple[httpx.AsyncClient, Recorder]) -> None:
    web, _ = controlled
    preflight = await web.options(GET_USER, headers={"origin": PAGE, "access-control-request-method": "POST"})
    assert preflight.status_code == 404  # the HTTP/JSON door's: no route takes OPTIONS there
    assert "access-control-allow-origin" not in preflight.headers
    reply = await web.post(GET_USER, content=get_user(ECHO), headers={**WEB, "origin": PAGE})
    assert parse(reply).code == 0
    assert "access-control-allow-origin" not in reply.headers
