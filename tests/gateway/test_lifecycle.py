"""The call's lifecycle (gateway/call/lifecycle.py) in-process, with real chains: begin, decision,
what goes upstream, end; and the HTTP doors keeping to it, on calls that never reach an upstream."""

from __future__ import annotations

import asyncio
import base64
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest
from shop.users.v1 import users_pb2

from gateway.call.chain import BUILT_IN_ORDER, Chain, MethodChain, Placement, ordered
from gateway.call.lifecycle import Pending, begin, decide, end, upstream, upstream_metadata
from gateway.call.metadata import forwarded
from gateway.call.step import Call, Metadata, Refusal, Verdict, Wait
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.config.schema import parse_config
from gateway.doors.http.door import HttpDoor
from gateway.doors.http.grpcweb import GrpcWebDoor
from gateway.doors.http.listener import door_plan
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import Plan, load_plan
from gateway.routing.table import RouteTable, build_routes, load_catalog
from tests.gateway.configs import API_KEY, PER_USER_RULE, USERS, gateway_toml
from tests.gateway.test_chain import Recorded

# No engine takes part (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

GET_USER = f"/{USERS}/GetUser"
KEY = (("x-api-key", API_KEY),)
# An address nothing answers on: no call of these tests may reach an upstream.
NOWHERE = "127.0.0.1:1"


class Recorder:
    """An observer that notes what the lifecycle tells it, passing it on to ``inner`` if given."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.events: list[tuple[str, Any]] = []

    def start(self) -> float:
        started: float = self.inner.start() if self.inner is not None else 12.5
        self.events.append(("start", started))
        return started

    def forwarding(self, call: Call) -> Metadata:
        self.events.append(("forwarding", call.upstream_started))
        metadata: Metadata = self.inner.forwarding(call) if self.inner is not None else (("x-up", "1"),)
        return metadata

    def ended(self, call: Call, code: grpc.StatusCode, started: float, ago: float = 0.0) -> None:
        self.events.append(("ended", (call, code, started)))
        if self.inner is not None:
            self.inner.ended(call, code, started, ago)

    def named(self, name: str) -> list[Any]:
        return [value for event, value in self.events if event == name]


class Awaits:
    """An ``async def`` step."""

    name = "awaits"

    def __init__(self, seen: list[str]) -> None:
        self._seen = seen

    async def check(self, call: Call) -> Refusal | None:
        await asyncio.sleep(0)
        self._seen.append(self.name)
        return None


async def _refused_after_waiting() -> Verdict:
    await asyncio.sleep(0)
    return Refusal(grpc.StatusCode.PERMISSION_DENIED, "refused after waiting")


class WaitsOnceThenRefuses:
    """A plain step that, this once, must wait (a ``Wait``), then refuses. Also a ``[[steps]]`` step."""

    name = "waits-once"

    def __init__(self, seen: list[str] | None = None) -> None:
        self._seen = seen if seen is not None else []

    def check(self, call: Call) -> Wait:
        self._seen.append(self.name)
        return Wait(_refused_after_waiting())


def _routes() -> RouteTable:
    config = parse_config(
        {
            "api_keys": [{"client": "demo", "key": API_KEY}],
            "routes": [{"service": USERS, "upstream": NOWHERE}],
        },
        "gateway.toml",
    )
    return build_routes(config, load_catalog(config))


ROUTES = _routes()


def one_chain(seen: list[str], *placements: Placement, observer: Recorder | None = None) -> MethodChain:
    built_in = {name: Recorded(name, seen) for name in BUILT_IN_ORDER}
    recorder = observer or Recorder()
    chain = Chain(
        ordered(built_in, list(placements)),
        {GET_USER: ROUTES.methods[GET_USER]},
        {GET_USER: recorder},
        recorder,
    )
    return chain.of(GET_USER)


def facts(metadata: Metadata = KEY) -> Call:
    return Call("grpc", GET_USER, metadata, lambda: "ipv4:127.0.0.1:5555", "request-1")


# Begin and end.


def test_a_call_begins_with_its_observers_start_and_ends_once_with_its_code() -> None:
    recorder = Recorder()
    chain = one_chain([], observer=recorder)
    call = facts()
    begin(chain, call)
    assert call.started == 12.5
    assert recorder.named("start") == [12.5]
    end(chain, call, grpc.StatusCode.CANCELLED)
    assert recorder.named("ended") == [(call, grpc.StatusCode.CANCELLED, 12.5)]


# The decision.


def test_a_chain_that_never_waits_decides_inline() -> None:
    seen: list[str] = []
    chain = one_chain(seen)
    assert decide(chain, facts()) is None
    assert seen == list(BUILT_IN_ORDER)
    refusal = Refusal(grpc.StatusCode.PERMISSION_DENIED, "no")
    refusing = one_chain(seen, Placement(Recorded("no", seen, refusal), "no", after="auth"))
    assert decide(refusing, facts()) is refusal


async def test_a_chain_with_an_async_step_decides_on_the_loop() -> None:
    seen: list[str] = []
    chain = one_chain(seen, Placement(Awaits(seen), "awaits", after="auth", timeout=1))
    verdict = decide(chain, facts())
    assert isinstance(verdict, Pending)
    assert seen == []  # nothing runs until the door awaits it
    assert await verdict is None
    assert seen == ["metadata", "auth", "awaits", "route", "rate_limit"]


async def test_a_plain_step_that_must_wait_this_once_finishes_on_the_loop() -> None:
    seen: list[str] = []
    chain = one_chain(seen, Placement(WaitsOnceThenRefuses(seen), "waits-once", after="auth"))
    assert not chain.waits
    verdict = decide(chain, facts())
    assert isinstance(verdict, Pending)  # the chain's Deferred does not reach the door
    assert seen == ["metadata", "auth", "waits-once"]
    refusal = await verdict
    assert refusal is not None
    assert (refusal.code, refusal.message) == (grpc.StatusCode.PERMISSION_DENIED, "refused after waiting")
    assert seen == ["metadata", "auth", "waits-once"]  # refused: the later steps never ran


def test_a_pending_decision_a_door_drops_is_closed() -> None:
    seen: list[str] = []
    pending = decide(one_chain(seen, Placement(Awaits(seen), "awaits", after="auth")), facts())
    assert isinstance(pending, Pending)
    pending.close()
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        pending.rest.send(None)
    assert seen == []


# What goes upstream.


def test_what_goes_upstream_is_the_observers_metadata_and_the_timeout() -> None:
    recorder = Recorder()
    chain = one_chain([], observer=recorder)
    call = facts()
    assert upstream_metadata(chain, call) == (("x-up", "1"),)
    [stamped] = recorder.named("forwarding")
    assert stamped == call.upstream_started > 0  # set before the observer sees the call
    assert upstream(chain, facts(), 5.0, 30.0) == ((("x-up", "1"),), 5.0)
    assert upstream(chain, facts(), None, 30.0)[1] == 30.0
    assert upstream(chain, facts(), None, None)[1] is None
    assert upstream(chain, facts(), 1e12, 7.0)[1] == 7.0  # a deadline of centuries is none


def a_plan(tmp_path: Path, steps: str = "") -> Plan:
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml({USERS: NOWHERE}, rules=PER_USER_RULE + steps))
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    return load_plan(path, {}, lambda config: quiet)


def test_an_admitted_call_goes_upstream_with_the_gateways_metadata(tmp_path: Path) -> None:
    chain = a_plan(tmp_path).chain.of(GET_USER)
    call = Call("grpc", GET_USER, (*KEY, ("x-tenant", "acme")), lambda: "ipv4:10.0.0.9:5555", "r")
    call.first = users_pb2.GetUserRequest(user_id=101).SerializeToString()
    begin(chain, call)
    assert decide(chain, call) is None
    metadata, timeout = upstream(chain, call, None, None)
    assert metadata == forwarded(call)
    assert ("x-api-key", API_KEY) not in metadata
    assert ("x-client-id", "demo") in metadata
    assert timeout is None
    end(chain, call, grpc.StatusCode.OK)


# The HTTP doors keep to it: each call they take ends once, with the code the caller was sent.


def waiting_plan(tmp_path: Path) -> Plan:
    """A plan whose chain has a step that must wait this once (after ``auth``)."""
    return a_plan(tmp_path, f'\n[[steps]]\nuse = "{__name__}:WaitsOnceThenRefuses"\nafter = "auth"\n')


async def asgi(app: Any, scope: dict[str, Any], body: bytes = b"") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
    }


def observed(chain: MethodChain) -> Recorder:
    recorder = Recorder(chain.observer)
    chain.observer = recorder
    return recorder


def ended_codes(recorder: Recorder) -> list[grpc.StatusCode]:
    return [code for _, code, _ in recorder.named("ended")]


async def run_doors(plan: Plan, check: Any) -> None:
    doors = door_plan(plan)
    try:
        await check(GrpcWebDoor(HttpDoor(doors)))
    finally:
        await doors.close()


async def test_the_http_door_finishes_a_decision_that_waits_and_ends_the_call_once(tmp_path: Path) -> None:
    plan = waiting_plan(tmp_path)
    recorder = observed(plan.chain.of(GET_USER))

    async def check(app: Any) -> None:
        sent = await asgi(app, http_scope("GET", "/v1/users/101", [(b"x-api-key", API_KEY.encode())]))
        assert sent[0]["status"] == 403
        assert b"refused after waiting" in sent[1]["body"]

    await run_doors(plan, check)
    assert ended_codes(recorder) == [grpc.StatusCode.PERMISSION_DENIED]
    assert len(recorder.named("start")) == 1
    assert recorder.named("forwarding") == []


async def test_the_grpc_web_door_finishes_a_decision_that_waits_and_ends_the_call_once(
    tmp_path: Path,
) -> None:
    plan = waiting_plan(tmp_path)
    recorder = observed(plan.chain.of(GET_USER))
    request = users_pb2.GetUserRequest(user_id=101).SerializeToString()
    body = struct.pack(">BI", 0, len(request)) + request
    headers = [(b"content-type", b"application/grpc-web-text"), (b"x-api-key", API_KEY.encode())]

    async def check(app: Any) -> None:
        sent = await asgi(app, http_scope("POST", GET_USER, headers), base64.b64encode(body))
        reply_headers = dict(sent[0]["headers"])
        assert reply_headers[b"grpc-status"] == b"7"
        assert reply_headers[b"grpc-message"] == b"refused after waiting"

    await run_doors(plan, check)
    assert ended_codes(recorder) == [grpc.StatusCode.PERMISSION_DENIED]


async def test_the_http_door_ends_a_request_it_refuses_before_the_chain_once(tmp_path: Path) -> None:
    plan = waiting_plan(tmp_path)
    recorder = observed(plan.chain.unrouted)

    async def check(app: Any) -> None:
        sent = await asgi(app, http_scope("GET", "/v1/nothing", []))
        assert sent[0]["status"] == 404

    await run_doors(plan, check)
    [(call, code, started)] = recorder.named("ended")
    assert code == grpc.StatusCode.NOT_FOUND
    assert started == call.started == recorder.named("start")[0]
