"""Traces through the gateway, as a collector receives them: a real OTLP/gRPC receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
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
    FOREVER,
    KEY,
    USERS,
    Gateway,
    Seen,
    gateway_beside,
    get_user,
    route,
    toml,
    upstream,
    value,
    wait_for,
    write,
)
from tests.support.processes import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent."""

    def __init__(self, stalled: bool = False) -> None:
        """``stalled``: it takes every export and never answers (until the client gives up)."""
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self._lock = threading.Lock()
        self._stalled = stalled

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._stalled:
            threading.Event().wait(context.time_remaining() or 5)
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, method: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [span for span in self.spans if span.name == method]


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


def tracing(port: int, extra: str = "") -> str:
    return f"""
[tracing]
endpoint = "127.0.0.1:{port}"
service_name = "edge-gateway"
export_timeout = 0.5
{extra or "export_delay = 0.1"}
"""


@contextlib.asynccontextmanager
async def traced_gateway(
    tmp_path: Path, collector_port: int, extra: str = ""
) -> AsyncIterator[tuple[Gateway, str, Seen]]:
    async with upstream("users-a") as (users_port, seen):
        http_port = free_port()
        tail = tracing(collector_port, extra) + "\n[http]\n"
        config = write(tmp_path, toml(route(USERS, f"127.0.0.1:{users_port}"), tail=tail))
        async with gateway_beside(config, "--http-listen", f"127.0.0.1:{http_port}", metrics=True) as started:
            yield started, f"http://127.0.0.1:{http_port}", seen


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    with receiver() as (port, collected):
        async with traced_gateway(tmp_path, port) as (gateway, http, seen):
            yield Setup(gateway, http, seen, collected)


GET_USER = f"{USERS}/GetUser"


async def spans_of(collector: Receiver, method: str, count: int) -> list[trace_pb2.Span]:
    await wait_for(
        lambda: len(collector.named(method)) >= count, within=10, what=f"{count} spans of {method}"
    )
    return collector.named(method)


async def test_a_call_continues_the_callers_trace_and_the_upstream_continues_the_gateways(
    setup: Setup,
) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, 7, metadata=(*KEY, ("traceparent", TRACEPARENT)))
    assert code == grpc.StatusCode.OK
    spans = await spans_of(setup.collector, GET_USER, 2)
    server = next(span for span in spans if span.kind == SERVER)
    client = next(span for span in spans if span.kind == CLIENT)
    assert server.trace_id.hex() == client.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID
    assert client.parent_span_id == server.span_id
    assert attributes(server) == {
        "rpc.system": "grpc",
        "rpc.service": USERS,
        "rpc.method": "GetUser",
        "rpc.grpc.status_code": 0,
        "gateway.door": "grpc",
        "gateway.client": "demo",
        "gateway.request_id": setup.seen.metadata[-1]["x-request-id"],
    }
    assert attributes(client)["server.address"] == "127.0.0.1"
    assert attributes(client)["rpc.grpc.status_code"] == 0
    assert not any("secret-key" in str(v) for span in spans for v in attributes(span).values())
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


async def test_a_refused_call_is_one_span_with_the_reason(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        code, _, _ = await get_user(channel, 9, metadata=(("traceparent", TRACEPARENT),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
        with pytest.raises(grpc.aio.AioRpcError):
            await unrouted(b"", metadata=KEY, timeout=5)
    (refused,) = await spans_of(setup.collector, GET_USER, 1)
    assert refused.kind == SERVER
    assert refused.parent_span_id.hex() == PARENT_ID
    assert attributes(refused)["gateway.refused"] == "auth: missing_key"
    assert attributes(refused)["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert refused.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    (shop,) = await spans_of(setup.collector, "shop.shoppers.v1.ShopService/GetShop", 1)
    assert attributes(shop)["gateway.refused"] == "unrouted"
    assert setup.seen.started == 0


async def test_a_streams_span_ends_when_the_stream_does(setup: Setup) -> None:
    async with grpc.aio.insecure_channel(setup.gateway.address) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        stream = users.ListUsers(users_pb2.ListUsersRequest(segment=FOREVER), metadata=KEY)
        for _ in range(10):
            await stream.read()
        await asyncio.sleep(0.5)  # two export rounds: nothing of the open stream may be sent yet
        assert setup.collector.named(f"{USERS}/ListUsers") == []
        stream.cancel()
    spans = await spans_of(setup.collector, f"{USERS}/ListUsers", 2)
    server = next(span for span in spans if span.kind == SERVER)
    assert (server.end_time_unix_nano - server.start_time_unix_nano) / 1e9 >= 0.6
    assert attributes(server)["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_the_http_door_is_traced_too(setup: Setup) -> None:
    async with httpx.AsyncClient(base_url=setup.http, timeout=10) as web:
        reply = await web.get("/v1/users/11", headers={"x-api-key": "secret-key", "traceparent": TRACEPARENT})
    assert reply.status_code == 200
    spans = await spans_of(setup.collector, GET_USER, 2)
    server = next(span for span in spans if span.kind == SERVER)
    assert server.parent_span_id.hex() == PARENT_ID
    assert attributes(server)["gateway.door"] == "http"
    client = next(span for span in spans if span.kind == CLIENT)
    assert setup.seen.metadata[-1]["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"


async def twenty_calls_answered(gateway: Gateway, seen: Seen) -> None:
    """20 GetUser calls, each answered OK within 2 s, whatever the collector does."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        for user_id in range(20):
            code, _, _ = await asyncio.wait_for(get_user(channel, 100 + user_id), timeout=2)
            assert code == grpc.StatusCode.OK
    assert seen.finished == 20


async def test_calls_go_on_while_the_collector_is_down_and_the_drops_are_counted(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    async with traced_gateway(tmp_path, port) as (gateway, _, seen):
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
        async with traced_gateway(tmp_path, port, extra) as (gateway, _, seen):
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
