"""The HTTP/JSON door, through a real gateway process in front of the real services (both engines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.upstream_double import ECHO, FAIL_WITH_DETAILS, Recorder, start_upstream
from tests.support.processes import free_port, running, stderr_text

KEY = {"x-api-key": "secret-key"}
NOTEBOOK_ROUTES = """
[http]
json_names = "proto"

[[http.routes]]
method = "GET"
path = "/api/users/users/{user_id}"
call = "/shop.users.v1.UserService/GetUser"

[[http.routes]]
method = "GET"
path = "/api/recommend/recommend/{user_id}"
call = "/shop.recommendations.v1.RecommendationService/GetRecommendations"
"""


@dataclass(frozen=True)
class Doors:
    grpc: str
    http: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def http_gateway(config: Path) -> Iterator[Doors]:
    port, http_port = free_port(), free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running([*args, "--http-listen", f"127.0.0.1:{http_port}"], port) as process:
        yield Doors(f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", process)


@pytest.fixture
def doors(services: Services, tmp_path: Path) -> Iterator[Doors]:
    """The reference setup's doors: 5 calls per user per 30 s, the notebook's paths, proto names."""
    with http_gateway(write_config(tmp_path, gateway_toml(services.routes) + NOTEBOOK_ROUTES)) as started:
        yield started


@pytest.fixture
async def web(doors: Doors) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=doors.http, timeout=10) as client:
        yield client


# The notebook's cells, replayed over HTTP.


async def test_a_wrong_key_is_401(web: httpx.AsyncClient) -> None:
    reply = await web.get("/api/users/users/101", headers={"x-api-key": "secret-key_1"})
    assert reply.status_code == 401
    assert reply.json() == {"code": 16, "message": "invalid API key", "details": []}
    assert reply.headers["x-request-id"]


async def test_the_notebook_calls_verbatim(web: httpx.AsyncClient) -> None:
    sean = await web.get("/api/users/users/104", headers=KEY)
    assert sean.status_code == 200
    assert sean.json() == {"user_id": 104, "name": "Sean", "segment": "ultra luxury"}
    assert sean.headers["content-type"] == "application/json"
    aman = await web.get("/api/recommend/recommend/103", headers=KEY)
    assert aman.json() == {"user_id": 103, "recommendations": ["T-shirt", "jeans", "shoes"]}
    # 103 spent one unit on recommendations: four GetUser pass, the fifth is refused.
    codes = [(await web.get("/api/users/users/103", headers=KEY)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 200]
    refused = await web.get("/api/users/users/103", headers=KEY)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining"] == "0"
    body = refused.json()
    assert body["code"] == 8
    assert body["message"].startswith("rate limit exceeded for user_id 103: 5 per 30 seconds, retry in ")
    assert [detail["@type"] for detail in body["details"]] == [
        "type.googleapis.com/google.rpc.RetryInfo",
        "type.googleapis.com/google.rpc.QuotaFailure",
    ]
    assert body["details"][1]["violations"][0]["subject"] == "user_id 103"
    unknown = await web.get("/api/orders/orders/101", headers=KEY)
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "no route for GET /api/orders/orders/101"


async def test_five_rounds_over_every_user_and_both_services(web: httpx.AsyncClient) -> None:
    seen: dict[tuple[str, int], list[int]] = {}
    for _ in range(5):
        for user in (101, 102, 103, 104):
            for service in ("users/users", "recommend/recommend"):
                reply = await web.get(f"/api/{service}/{user}", headers=KEY)
                seen.setdefault((service, user), []).append(reply.status_code)
    for user in (101, 102, 103, 104):
        # Ten calls per user, one budget of five across both services.
        calls = [
            code
            for round_ in zip(seen[("users/users", user)], seen[("recommend/recommend", user)], strict=True)
            for code in round_
        ]
        assert calls == [200] * 5 + [429] * 5


# One budget across doors.


async def test_one_budget_per_user_across_both_doors(doors: Doors, web: httpx.AsyncClient) -> None:
    async with grpc.aio.insecure_channel(doors.grpc) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        for _ in range(3):
            await stub.GetUser(users_pb2.GetUserRequest(user_id=102), metadata=tuple(KEY.items()), timeout=5)
        assert (await web.get("/v1/users/102", headers=KEY)).status_code == 200
        assert (await web.get("/api/users/users/102", headers=KEY)).status_code == 200
        assert (await web.get("/v1/users/102", headers=KEY)).status_code == 429
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(users_pb2.GetUserRequest(user_id=102), metadata=tuple(KEY.items()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# The mapping from the protos' google.api.http rules.


async def test_rules_from_the_protos(web: httpx.AsyncClient) -> None:
    user = await web.get("/v1/users/101", headers=KEY)
    assert user.json() == {"user_id": 101, "name": "Atul", "segment": "premium"}
    recommendations = await web.get("/v1/users/102/recommendations", headers=KEY)
    assert recommendations.json()["recommendations"] == ["dress", "shoes", "handbag"]
    missing = await web.get("/v1/users/999", headers=KEY)
    assert missing.status_code == 404
    assert missing.json() == {"code": 5, "message": "user 999 not found", "details": []}
    invalid = await web.get("/v1/users/0", headers=KEY)
    assert invalid.status_code == 400


async def test_server_streaming_is_newline_delimited_json(web: httpx.AsyncClient) -> None:
    reply = await web.get("/v1/users", params={"segment": "premium"}, headers=KEY)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert [(line["user_id"], line["name"]) for line in lines] == [(101, "Atul"), (103, "Aman")]


async def test_server_sent_events_when_asked(web: httpx.AsyncClient) -> None:
    reply = await web.get(
        "/v1/users", params={"segment": "luxury"}, headers={**KEY, "accept": "text/event-stream"}
    )
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.text == 'data: {"user_id": 102, "name": "Anagha", "segment": "luxury"}\n\n'


async def test_client_streaming_takes_one_request_a_line(web: httpx.AsyncClient) -> None:
    body = '{"user_id": 101}\n{"user_id": 104}\n'
    reply = await web.post("/v1/recommendations:group", content=body, headers=KEY)
    assert reply.status_code == 200
    assert reply.json() == {
        "user_ids": [101, 104],
        "recommendations": ["shirt", "jeans", "watch", "Jackets", "Bracelet", "Shorts"],
    }


async def test_an_error_after_the_stream_started_is_its_last_line(web: httpx.AsyncClient) -> None:
    body = '{"user_id": 101}\n{"user_id": 999}\n'
    reply = await web.post("/v1/recommendations:stream", content=body, headers=KEY)
    assert reply.status_code == 200
    first, last = reply.text.splitlines()
    assert json.loads(first) == {"user_id": 101, "recommendations": ["shirt", "jeans", "watch"]}
    assert json.loads(last) == {
        "error": {"code": 5, "message": "no recommendations for user 999", "details": []}
    }


# Errors a web client understands.


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/users/101", None, 405, "POST is not allowed on /v1/users/101; use GET"),
        ("GET", "/v2/users/101", None, 404, "no route for GET /v2/users/101"),
        ("GET", "/v1/users/abc", None, 400, "Failed to parse user_id field"),
        (
            "GET",
            "/v1/users/101?color=red",
            None,
            400,
            "query parameter 'color': shop.users.v1.GetUserRequest has no scalar field 'color'",
        ),
        (
            "GET",
            "/v1/users/101?user_id=2",
            None,
            400,
            "query parameter 'user_id': the field is already set by the path",
        ),
        ("GET", "/v1/users/101", b'{"user_id": 1}', 400, "GET /v1/users/{user_id} takes no body"),
        (
            "POST",
            "/v1/recommendations:group",
            b'{"user_id": ',
            400,
            "line 1 of the request body is not valid JSON",
        ),
        ("POST", "/v1/recommendations:group", b'{"user_idd": 1}', 400, 'no field named "user_idd"'),
        ("POST", "/v1/recommendations:group", b"\xff\xfe", 400, "line 1 of the request body is not UTF-8"),
    ],
)
async def test_bad_requests_name_what_is_wrong(
    web: httpx.AsyncClient, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    reply = await web.request(method, path, content=body, headers=KEY)
    assert reply.status_code == status
    assert message in reply.json()["message"]
    if status == 405:
        assert reply.headers["allow"] == "GET"


async def test_hostile_requests_get_4xx_and_the_door_keeps_serving(
    doors: Doors, web: httpx.AsyncClient
) -> None:
    huge = await web.post("/v1/recommendations:group", content=b"x" * (5 * 1024 * 1024), headers=KEY)
    assert huge.status_code == 413
    # Too long a URL for httpx: sent as raw bytes.
    query = "&".join(f"p{n}=1" for n in range(10_000))
    many = await raw_status(
        doors.http, f"GET /v1/users/101?{query} HTTP/1.1\r\nhost: x\r\nx-api-key: secret-key\r\n\r\n"
    )
    assert many == 400
    flood = await web.get("/v1/users/101", headers={**KEY, **{f"x-h{n}": "v" * 100 for n in range(200)}})
    assert flood.status_code in (431, 400)
    unprintable = await web.get(
        "/v1/users/101", headers={b"x-api-key": b"secret-key", b"x-note": "caf\u00e9".encode()}
    )
    assert unprintable.status_code == 400
    assert "metadata x-note has a value that is not printable ASCII" in unprintable.json()["message"]
    timeout = await web.get("/v1/users/101", headers={**KEY, "grpc-timeout": "soon"})
    assert timeout.status_code == 400
    assert (await web.get("/v1/users/101", headers=KEY)).status_code == 200


async def raw_status(base: str, request: str) -> int:
    """The status code of one request written as raw bytes (what no HTTP client would send)."""
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1])


# Metadata both ways, and the stream flushed per message, against an upstream the test controls.


@pytest.fixture
async def controlled(tmp_path: Path) -> AsyncIterator[tuple[Doors, Recorder]]:
    recorder = Recorder()
    server, port = await start_upstream(recorder)
    config = write_config(tmp_path, gateway_toml({USERS: f"127.0.0.1:{port}"}, rules="") + "\n[http]\n")
    try:
        with http_gateway(config) as started:
            yield started, recorder
    finally:
        await server.stop(None)


async def test_metadata_both_ways(controlled: tuple[Doors, Recorder]) -> None:
    doors, recorder = controlled
    headers = {
        **KEY,
        "x-tenant": "acme",
        "x-client-id": "forged",
        "x-blob-bin": "/wA=",
        "x-request-id": "req-7",
    }
    async with httpx.AsyncClient(base_url=doors.http, timeout=10) as web:
        reply = await web.get(f"/v1/users/{ECHO}", headers=headers)
    assert reply.status_code == 200
    # Default JSON names: proto3's lowerCamelCase.
    assert reply.json() == {"userId": ECHO, "name": "echo", "segment": "test"}
    received = recorder.metadata[-1]
    assert received["x-tenant"] == "acme"
    assert received["x-blob-bin"] == b"\xff\x00"
    assert received["x-client-id"] == "demo"
    assert received["x-request-id"] == "req-7"
    assert "x-api-key" not in received
    assert reply.headers["grpc-metadata-x-upstream-header"] == "hello"
    assert reply.headers["grpc-metadata-x-upstream-trailer"] == "bye"
    assert reply.headers["grpc-metadata-x-trace-bin"] == "AAE="
    assert reply.headers["x-request-id"] == "req-7"


async def test_an_upstreams_rich_error_keeps_its_details(controlled: tuple[Doors, Recorder]) -> None:
    doors, _ = controlled
    async with httpx.AsyncClient(base_url=doors.http, timeout=10) as web:
        reply = await web.get(f"/v1/users/{FAIL_WITH_DETAILS}", headers=KEY)
    assert reply.status_code == 400  # FAILED_PRECONDITION, as google.rpc.Code maps it
    assert reply.json() == {
        "code": 9,
        "message": "user 2 is locked",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "USER_LOCKED",
                "domain": "users.shop",
            }
        ],
    }
    assert reply.headers["grpc-metadata-x-why"] == "locked"


async def test_each_streamed_message_is_flushed_as_it_arrives(controlled: tuple[Doors, Recorder]) -> None:
    doors, recorder = controlled
    async with (
        httpx.AsyncClient(base_url=doors.http, timeout=10) as web,
        web.stream("GET", "/v1/users", headers=KEY) as reply,
    ):
        # The upstream's ListUsers never ends: lines can only arrive if each is sent as it comes.
        lines = reply.aiter_lines()
        first = json.loads(await asyncio.wait_for(anext(lines), 5))
        second = json.loads(await asyncio.wait_for(anext(lines), 5))
    assert (first["userId"], second["userId"]) == (1, 2)
    await asyncio.wait_for(recorder.cancelled.wait(), 5)  # the client left: the upstream call is cancelled


async def test_an_unreachable_upstream_is_503(services: Services, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        gateway_toml({USERS: f"127.0.0.1:{free_port()}", RECOMMENDATIONS: services.recommendations})
        + "\n[http]\n",
    )
    with http_gateway(config) as doors:
        async with httpx.AsyncClient(base_url=doors.http, timeout=10) as web:
            reply = await web.get("/v1/users/101", headers=KEY)
    assert reply.status_code == 503
    assert reply.json()["message"].startswith("upstream 127.0.0.1:")


async def test_an_upstream_ending_a_stream_early_keeps_its_status(services: Services, tmp_path: Path) -> None:
    """grpc.aio's client turned this into INTERNAL "Internal error from Core" about 1 call in 15;
    the door sends client-streamed requests on grpc's blocking API instead."""
    config = write_config(tmp_path, gateway_toml(services.routes, rules="") + "\n[http]\n")
    body = "".join(f'{{"user_id": {user}}}\n' for user in (999, *range(101, 105), *range(101, 105)))
    with http_gateway(config) as doors:
        async with httpx.AsyncClient(base_url=doors.http, timeout=10) as web:
            streamed = [
                await web.post("/v1/recommendations:stream", content=body, headers=KEY) for _ in range(60)
            ]
            grouped = [
                await web.post("/v1/recommendations:group", content=body, headers=KEY) for _ in range(60)
            ]
    status = {"code": 5, "message": "no recommendations for user 999", "details": []}
    # The first request fails: no reply was sent, so the status is the response's own.
    assert [
        reply.text for reply in (*streamed, *grouped) if reply.status_code != 404 or reply.json() != status
    ] == []


async def test_every_request_has_an_access_log_line(doors: Doors, web: httpx.AsyncClient) -> None:
    assert (await web.get("/v1/users/101", headers={**KEY, "x-request-id": "http-ok"})).status_code == 200
    assert (await web.get("/nowhere", headers={**KEY, "x-request-id": "http-404"})).status_code == 404
    lines: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # lines are written on the engine's tick (0.25 s)
        for line in stderr_text(doors.process).splitlines():
            if '"logger":"access"' in line:
                entry = json.loads(line)
                if entry["request_id"] in ("http-ok", "http-404"):
                    lines[str(entry["request_id"])] = entry
    assert lines["http-ok"]["method"] == "/shop.users.v1.UserService/GetUser"
    assert (lines["http-ok"]["code"], lines["http-ok"]["client"], lines["http-ok"]["rate_limit"]) == (
        "OK",
        "demo",
        "allowed",
    )
    assert (lines["http-404"]["method"], lines["http-404"]["code"]) == ("/nowhere", "NOT_FOUND")
