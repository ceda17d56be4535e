"""Traces through the gateway, as a collector receives them: a real OTLP/gRPC receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.gateway.ops_support import (
    FLAKY,
    FOREVER,
    KEY,
    USERS,
    Gateway,
    Seen,
    get_user,
    route,
    toml,
    upstream,
    value,
    wait_for,
    write,
)
from tests.support.processes import free_port, running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT
UNSET, ERROR = trace_pb2.Status.STATUS_CODE_UNSET, trace_pb2.Status.STATUS_CODE_ERROR
GET_USER = f"{USERS}/GetUser"
# Two GetUser calls a minute per user: the third for one user is refused RESOURCE_EXHAUSTED.
RULE = """
[[rate_limit.rules]]
name = "per-user"
rate = "2/minute"
key = "field:user_id"
scope = ["/shop.users.v1.UserService/GetUser"]
"""
# A value of a collector header set in the environment: it must reach the collector and no log.
SECRET = "s3cr3t-collector-key"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent, and the metadata of each export."""

    def __init__(self, stalled: bool = False) -> None:
        """``stalled``: it takes every export and never answers (until the client gives up)."""
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self.metadata: list[dict[str, str | bytes]] = []
        self._lock = threading.Lock()
        self._stalled = stalled

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._stalled:
            threading.Event().wait(context.time_remaining() or 5)
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            self.metadata.append(dict(context.invocation_metadata() or ()))
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [span for span in self.spans if span.name == name]


@contextlib.contextmanager
def receiver(stalled: bool = False) -> Iterator[tuple[int, Receiver]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collected = Receiver(stalled)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, collected
    finally:
        server.stop(None)


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        found[attribute.key] = getattr(attribute.value, kind) if kind else None
    return found


@dataclass
class Setup:
    gateway: Gateway
    http: str
    seen: Seen
    collector: Receiver
    users_port: int


def tracing(port: int, extra: str = "") -> str:
    return f"""
[tracing]
endpoint = "127.0.0.1:{port}"
service_name = "edge-gateway"
export_timeout = 0.5
{extra or "export_delay = 0.1"}
"""


@contextlib.contextmanager
def gateway_with(config: Path, env: dict[str, str], *options: str) -> Iterator[Gateway]:
    """``python -m gateway --config config`` with ``env`` added to its environment, with metrics."""
    port, metrics_port = free_port(), free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", *options]
    with running([*args, "--metrics-listen", str(metrics_port)], port, env=env) as process:
        yield Gateway(f"127.0.0.1:{port}", process, metrics_port)


@contextlib.asynccontextmanager
async def gateway_started(
    tmp_path: Path, tail: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Gateway, str, Seen, int]]:
    """A gateway whose config ends with ``tail``, before a users upstream of this process, with an
    HTTP door: the gateway, the HTTP door's URL, what reached the upstream, and its port."""
    async with upstream("users-a") as (users_port, seen):
        http_port = free_port()
        config = write(
            tmp_path, toml(route(USERS, f"127.0.0.1:{users_port}"), tail=f"{RULE}{tail}\n[http]\n")
        )
        options = ("--http-listen", f"127.0.0.1:{http_port}")
        with contextlib.ExitStack() as stack:
            # Started from a thread: this event loop stays free for the upstream it serves.
            started = await asyncio.to_thread(stack.enter_context, gateway_with(config, env or {}, *options))
            try:
                yield started, f"http://127.0.0.1:{http_port}", seen, users_port
            finally:
                await asyncio.to_thread(stack.close)


@contextlib.asynccontextmanager
async def traced_gateway(
    tmp_path: Path, collector_port: int, extra: str = ""
) -> AsyncIterator[tuple[Gateway, str, Seen, int]]:
    async with gateway_started(tmp_path, tracing(collector_port, extra)) as started:
        yield started


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    with receiver() as (port, collected):
        async with traced_gateway(tmp_path, port) as (gateway, http, seen, users_port):
            yield Setup(gateway, http, seen, collected, users_port)


async def spans_of(collector: Receiver, name: str, count: int) -> list[trace_pb2.Span]:
    await wait_for(lambda: len(collector.named(name)) >= count, within=10, what=f"{count} spans of {name}")
    return collector.named(name)


def server_and_client(spans: list[trace_pb2.Span]) -> tuple[trace_pb2.Span, trace_pb2.Span]:
    return next(s for s in spans if s.kind == SERVER), next(s for s in spans if s.kind == CLIENT)


async def test_a_call_continues_the_callers_trace_and_the_upstream_continues_the_gateways(
    setup: Setup,
) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, 7, metadata=(*KEY, ("traceparent", TRACEPARENT)))
    assert code == grpc.StatusCode.OK
    server, client = server_and_client(await spans_of(setup.collector, GET_USER, 2))
    assert server.trace_id.hex() == client.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID
    assert client.parent_span_id == server.span_id
    found = attributes(server)
    caller_port = found["client.port"]
    assert isinstance(caller_port, int)
    assert caller_port > 0
    assert found == {
        "rpc.system.name": "grpc",
        "rpc.method": GET_USER,
        "rpc.response.status_code": "OK",
        "client.address": "127.0.0.1",
        "client.port": caller_port,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": caller_port,
        "gateway.door": "grpc",
        "gateway.client": "demo",
        "gateway.request_id": setup.seen.metadata[-1]["x-request-id"],
    }
    assert attributes(client) == {
        "rpc.system.name": "grpc",
        "rpc.method": GET_USER,
        "rpc.response.status_code": "OK",
        "server.address": "127.0.0.1",
        "server.port": setup.users_port,
    }
    assert (server.status.code, client.status.code) == (UNSET, UNSET)
    assert not any("secret-key" in str(v) for span in (server, client) for v in attributes(span).values())
    # The upstream is handed the client span's context, not the caller's.
    sent = setup.seen.metadata[-1]
    assert sent["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    assert setup.collector.service_names == {"edge-gateway"}


async def test_a_call_without_a_traceparent_starts_a_trace(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, 8)
    assert code == grpc.StatusCode.OK
    spans = await spans_of(setup.collector, GET_USER, 2)
    server = next(span for span in spans if span.kind == SERVER)
    assert server.parent_span_id == b""
    assert str(setup.seen.metadata[-1]["traceparent"]).startswith(f"00-{server.trace_id.hex()}-")


async def test_refusals_are_server_spans_and_errors_only_where_the_conventions_say(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, 9, metadata=(("traceparent", TRACEPARENT),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        codes = [(await get_user(channel, 10))[0] for _ in range(3)]
        assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
        unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        with pytest.raises(grpc.aio.AioRpcError):
            await unrouted(b"", metadata=KEY, timeout=5)
    spans = await spans_of(setup.collector, GET_USER, 6)  # 1 refused, 2 OK with their client spans, 1 limited
    servers = [span for span in spans if span.kind == SERVER]
    by_code = {attributes(span)["rpc.response.status_code"]: span for span in servers}
    assert sorted(by_code) == ["OK", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"]

    # The gateway's refusals are answers it meant to give: not errors on a server span.
    missing_key = by_code["UNAUTHENTICATED"]
    assert missing_key.parent_span_id.hex() == PARENT_ID
    assert attributes(missing_key)["gateway.refused"] == "auth: missing_key"
    assert missing_key.status.code == UNSET
    assert "error.type" not in attributes(missing_key)
    limited = by_code["RESOURCE_EXHAUSTED"]
    assert attributes(limited)["gateway.refused"] == "rate limit: per-user"
    assert attributes(limited)["gateway.rate_limit"] == "refused"
    assert limited.status.code == UNSET
    assert "error.type" not in attributes(limited)
    assert len([span for span in spans if span.kind == CLIENT]) == 2  # refused calls never went upstream

    # A path no route knows: UNIMPLEMENTED is an error; the span is named for the system, not the
    # made-up method, which is kept apart.
    (shop,) = await spans_of(setup.collector, "grpc", 1)
    assert attributes(shop)["rpc.method"] == "_OTHER"
    assert attributes(shop)["rpc.method_original"] == "shop.shoppers.v1.ShopService/GetShop"
    assert attributes(shop)["gateway.refused"] == "unrouted"
    assert attributes(shop)["error.type"] == "UNIMPLEMENTED"
    assert shop.status.code == ERROR
    assert setup.collector.named("shop.shoppers.v1.ShopService/GetShop") == []


async def test_an_upstream_failure_is_an_error_on_both_spans(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, FLAKY)  # UNAVAILABLE from the upstream; no retry configured
    assert code == grpc.StatusCode.UNAVAILABLE
    server, client = server_and_client(await spans_of(setup.collector, GET_USER, 2))
    for span in (server, client):
        assert attributes(span)["rpc.response.status_code"] == "UNAVAILABLE"
        assert attributes(span)["error.type"] == "UNAVAILABLE"
        assert span.status.code == ERROR


async def test_a_streams_span_ends_when_the_stream_does(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        stream = users.ListUsers(users_pb2.ListUsersRequest(segment=FOREVER), metadata=KEY)
        for _ in range(10):
            await stream.read()
        await asyncio.sleep(0.5)  # two export rounds: nothing of the open stream may be sent yet
        assert setup.collector.named(f"{USERS}/ListUsers") == []
        stream.cancel()
    server, client = server_and_client(await spans_of(setup.collector, f"{USERS}/ListUsers", 2))
    assert (server.end_time_unix_nano - server.start_time_unix_nano) / 1e9 >= 0.6
    assert attributes(server)["rpc.response.status_code"] == "CANCELLED"
    # The caller cancelled: no fault of the gateway's, so its server span is no error; the call
    # upstream did not complete, which a client span counts as one.
    assert server.status.code == UNSET
    assert "error.type" not in attributes(server)
    assert client.status.code == ERROR
    assert attributes(client)["error.type"] == "CANCELLED"


async def test_the_http_door_is_traced_by_the_http_conventions(setup: Setup) -> None:
    async with httpx.AsyncClient(base_url=setup.http, timeout=10) as web:
        reply = await web.get("/v1/users/11", headers={"x-api-key": "secret-key", "traceparent": TRACEPARENT})
        assert reply.status_code == 200
        refused = await web.get("/v1/users/12")
        assert refused.status_code == 401
        nowhere = await web.get("/v2/nowhere", headers={"x-api-key": "secret-key"})
        assert nowhere.status_code == 404
    spans = await spans_of(setup.collector, "GET /v1/users/{user_id}", 2)
    by_status = {attributes(span)["http.response.status_code"]: span for span in spans}
    assert sorted(by_status) == [200, 401]
    server = by_status[200]
    assert server.kind == SERVER
    assert server.parent_span_id.hex() == PARENT_ID
    found = attributes(server)
    assert {key: found[key] for key in found if key.startswith(("http.", "url.", "rpc."))} == {
        "http.request.method": "GET",
        "http.route": "/v1/users/{user_id}",
        "http.response.status_code": 200,
        "url.path": "/v1/users/11",
        "url.scheme": "http",
        "rpc.system.name": "grpc",
        "rpc.method": GET_USER,
        "rpc.response.status_code": "OK",
    }
    assert found["gateway.door"] == "http"
    assert server.status.code == UNSET
    (client,) = await spans_of(setup.collector, GET_USER, 1)  # the call upstream is a gRPC client span
    assert client.kind == CLIENT
    assert client.parent_span_id == server.span_id
    assert setup.seen.metadata[-1]["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    # A 4xx is the caller's error, not the server's: no error status on an HTTP server span.
    unauthenticated = by_status[401]
    assert attributes(unauthenticated)["rpc.response.status_code"] == "UNAUTHENTICATED"
    assert unauthenticated.status.code == UNSET
    assert "error.type" not in attributes(unauthenticated)
    # No route took it: the span is named for the method alone, without http.route.
    (no_route,) = await spans_of(setup.collector, "GET", 1)
    found = attributes(no_route)
    assert (found["http.response.status_code"], found["url.path"]) == (404, "/v2/nowhere")
    assert "http.route" not in found
    assert "rpc.method_original" not in found  # the path is url.path: it names no gRPC method
    assert no_route.status.code == UNSET


async def test_the_access_log_line_carries_the_exported_server_spans_ids(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        sampled = (*KEY, ("x-request-id", "traced-1"), ("traceparent", TRACEPARENT))
        assert (await get_user(channel, 21, metadata=sampled))[0] == grpc.StatusCode.OK
        not_sampled = (*KEY, ("x-request-id", "untraced-1"), ("traceparent", NOT_SAMPLED))
        assert (await get_user(channel, 22, metadata=not_sampled))[0] == grpc.StatusCode.OK
    server, _ = server_and_client(await spans_of(setup.collector, GET_USER, 2))

    def line(request_id: str) -> dict[str, Any] | None:
        return next((x for x in setup.gateway.access_lines() if x["request_id"] == request_id), None)

    await wait_for(lambda: line("traced-1") and line("untraced-1"), what="both calls' access-log lines")
    traced = line("traced-1")
    assert traced is not None
    assert (traced["trace_id"], traced["span_id"]) == (server.trace_id.hex(), server.span_id.hex())
    assert (len(traced["trace_id"]), len(traced["span_id"])) == (32, 16)
    untraced = line("untraced-1")
    assert untraced is not None
    assert "trace_id" not in untraced
    assert "span_id" not in untraced
    assert len(setup.collector.named(GET_USER)) == 2  # the caller said not sampled: no spans of it


async def twenty_calls_answered(gateway: Gateway, seen: Seen) -> None:
    """20 GetUser calls, each answered OK within 2 s, whatever the collector does."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        for user_id in range(20):
            code, _, _ = await asyncio.wait_for(get_user(channel, 100 + user_id), timeout=2)
            assert code == grpc.StatusCode.OK
    assert seen.finished == 20


async def test_calls_go_on_while_the_collector_is_down_and_the_drops_are_counted(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    async with traced_gateway(tmp_path, port) as (gateway, _, seen, _):
        await twenty_calls_answered(gateway, seen)
        await wait_for(
            lambda: value(gateway.scrape(), "grpc_gateway_trace_spans_dropped_total") >= 40,
            within=15,
            what="the dropped spans counted",
        )
        assert "trace collector 127.0.0.1:" in gateway.log()


async def test_spans_past_the_queue_are_dropped_and_counted(tmp_path: Path) -> None:
    with receiver(stalled=True) as (port, _):
        # A collector that never answers: 10 spans may wait, the rest are dropped, not queued.
        extra = "export_delay = 0.1\nmax_queued_spans = 10"
        async with traced_gateway(tmp_path, port, extra) as (gateway, _, seen, _):
            await twenty_calls_answered(gateway, seen)
            # At least the 20 calls' other spans, once 10 wait: the first batch's export hangs.
            await wait_for(
                lambda: value(gateway.scrape(), "grpc_gateway_trace_spans_dropped_total") >= 20,
                within=10,
                what="the spans past the queue dropped",
            )
            log = gateway.log()
            assert "10 spans were waiting for the collector" in log
            assert "Queue full" not in log  # the SDK's own line for each span, on the call's thread


def otel_env(port: int, **more: str) -> dict[str, str]:
    """The variables an OpenTelemetry SDK is configured by, for a collector on ``port``."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "named-by-env",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-collector-key={SECRET}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **more,
    }


async def test_the_otel_variables_alone_turn_tracing_on(tmp_path: Path) -> None:
    with receiver() as (port, collected):
        # No [tracing] table: the variables say where spans go, as they would to any SDK.
        async with gateway_started(tmp_path, "", otel_env(port)) as (gateway, _, _, _):
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                assert (await get_user(channel, 31))[0] == grpc.StatusCode.OK
            await spans_of(collected, GET_USER, 2)
            log = gateway.log()
    assert collected.service_names == {"named-by-env"}
    assert {export["x-collector-key"] for export in collected.metadata} == {SECRET}
    assert SECRET not in log  # a header's value may be a key: never logged
    assert "spans of service named-by-env to http://127.0.0.1:" in log


async def test_the_variables_fill_in_what_the_tracing_table_leaves_out(tmp_path: Path) -> None:
    with receiver() as (port, collected):
        # [tracing] sets the service name and no endpoint: the name is its, the endpoint the variable's.
        tail = '[tracing]\nservice_name = "edge-gateway"\nexport_timeout = 0.5\n'
        async with gateway_started(tmp_path, tail, otel_env(port)) as (gateway, _, _, _):
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                assert (await get_user(channel, 32))[0] == grpc.StatusCode.OK
            await spans_of(collected, GET_USER, 2)
    assert collected.service_names == {"edge-gateway"}
    assert {export["x-collector-key"] for export in collected.metadata} == {SECRET}


async def test_the_tracing_table_wins_over_the_variables(tmp_path: Path) -> None:
    with receiver() as (config_port, configured), receiver() as (env_port, from_env):
        async with gateway_started(tmp_path, tracing(config_port), otel_env(env_port)) as (gateway, _, _, _):
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                assert (await get_user(channel, 33))[0] == grpc.StatusCode.OK
            await spans_of(configured, GET_USER, 2)
            await asyncio.sleep(0.3)  # three export rounds: anything bound for the other would be there
    assert configured.service_names == {"edge-gateway"}
    assert from_env.spans == []


async def test_otel_sdk_disabled_turns_tracing_off(tmp_path: Path) -> None:
    with receiver() as (port, collected):
        env = {"OTEL_SDK_DISABLED": "true"}
        async with gateway_started(tmp_path, tracing(port), env) as (gateway, _, _, _):
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                metadata = (*KEY, ("x-request-id", "off-1"), ("traceparent", TRACEPARENT))
                assert (await get_user(channel, 34, metadata=metadata))[0] == grpc.StatusCode.OK
            await wait_for(lambda: any(x["request_id"] == "off-1" for x in gateway.access_lines()))
            await asyncio.sleep(0.3)
            (line,) = [x for x in gateway.access_lines() if x["request_id"] == "off-1"]
            assert "trace_id" not in line
            assert "OTEL_SDK_DISABLED=true" in gateway.log()
    assert collected.spans == []


def test_a_header_variable_it_cannot_read_stops_the_gateway_without_showing_the_value(tmp_path: Path) -> None:
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1"), tail='[tracing]\nendpoint = "127.0.0.1:1"\n'))
    env = {"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {SECRET},{SECRET}"}  # the second has no name
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not NAME=VALUE" in done.stderr
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("table", "env", "traced"),
    [
        (False, {}, False),
        (True, {}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (False, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (False, {"OTEL_SERVICE_NAME": "everyone-has-one", "OTEL_RESOURCE_ATTRIBUTES": "a=b"}, False),
        (
            False,
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            False,
        ),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),  # empty is unset, as the specification says
        (True, {"OTEL_TRACES_EXPORTER": "none"}, True),  # [tracing] wins
        (True, {"OTEL_SDK_DISABLED": "TRUE"}, False),  # the SDK's off switch
        (False, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_what_turns_tracing_on(table: bool, env: dict[str, str], traced: bool) -> None:
    from gateway.config.schema import GatewayConfig
    from gateway.ops.observe import traces

    config = GatewayConfig.model_validate(
        {"routes": [{"service": USERS, "upstream": "127.0.0.1:1"}], **({"tracing": {}} if table else {})}
    )
    assert traces(config, env) is traced


def test_a_gateway_that_does_not_trace_never_imports_the_sdk(tmp_path: Path) -> None:
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1")))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gateway.config.schema import load_config\n"
        "from gateway.ops.observe import load_observability\n"
        f"observed = load_observability(load_config(Path({str(config)!r})))\n"
        "print(observed.tracer is None, any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    for env in ({}, {"OTEL_SERVICE_NAME": "set-for-every-process"}):
        done = subprocess.run(
            [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=60
        )
        assert done.stdout.split() == ["True", "False"], done.stderr
