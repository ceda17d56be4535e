"""The call chain without servers: its order, its refusals, and what a step may change."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from shop.users.v1 import users_pb2

from gateway.call.chain import BUILT_IN_ORDER, Chain, MethodChain, Placement, PlacementError, ordered
from gateway.call.metadata import forwarded
from gateway.call.step import Call, Metadata, Refusal
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.config.schema import parse_config
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import Plan, load_plan
from gateway.routing.table import RouteTable, build_routes, load_catalog
from tests.gateway.configs import API_KEY, PER_USER_RULE, USERS, gateway_toml

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

GET_USER = f"/{USERS}/GetUser"
LIST_USERS = f"/{USERS}/ListUsers"
KEY = (("x-api-key", API_KEY),)


class Recorded:
    """A step that notes its name in ``seen`` and lets the call go on (or refuses, if told)."""

    def __init__(self, name: str, seen: list[str], refusal: Refusal | None = None) -> None:
        self.name = name
        self._seen = seen
        self._refusal = refusal

    def check(self, call: Call) -> Refusal | None:
        self._seen.append(self.name)
        return self._refusal


class Observer:
    """The chain only hands its observer on to the door; these tests need one to build a chain."""

    def start(self) -> float:
        return 0.0

    def forwarding(self, call: Call) -> Metadata:
        return ()

    def ended(self, call: Call, code: grpc.StatusCode, started: float, ago: float = 0.0) -> None:
        pass


def observer() -> Observer:
    return Observer()


def built_in(seen: list[str]) -> dict[str, Recorded]:
    return {name: Recorded(name, seen) for name in BUILT_IN_ORDER}


def call(method: str = GET_USER, metadata: tuple[tuple[str, str | bytes], ...] = KEY) -> Call:
    return Call("grpc", method, metadata, lambda: "ipv4:127.0.0.1:5555", "request-1")


def routes() -> RouteTable:
    config = parse_config(
        {
            "api_keys": [{"client": "demo", "key": API_KEY}],
            "routes": [{"service": USERS, "upstream": "127.0.0.1:1"}],
        },
        "gateway.toml",
    )
    return build_routes(config, load_catalog(config))


ROUTES = routes()


def one_chain(steps: list[Placement]) -> MethodChain:
    chain = Chain(steps, {GET_USER: ROUTES.methods[GET_USER]}, {GET_USER: observer()}, observer())
    return chain.of(GET_USER)


# The order.


def test_the_gateway_steps_come_in_one_order() -> None:
    assert BUILT_IN_ORDER == ("metadata", "auth", "route", "rate_limit")
    seen: list[str] = []
    assert one_chain(ordered(built_in(seen), [])).decide(call()) is None
    assert seen == ["metadata", "auth", "route", "rate_limit"]


def test_user_steps_go_where_the_config_puts_them() -> None:
    seen: list[str] = []
    placements = [
        Placement(Recorded("tenant", seen), "tenant", after="auth"),
        Placement(Recorded("audit", seen), "audit", after="auth"),  # after the first one placed there
        Placement(Recorded("first", seen), "first", before="metadata"),
        Placement(Recorded("last", seen), "last", after="rate_limit"),
        Placement(Recorded("after-tenant", seen), "after-tenant", after="tenant"),
    ]
    chain = one_chain(ordered(built_in(seen), placements))
    assert chain.step_names == (
        "first",
        "metadata",
        "auth",
        "tenant",
        "after-tenant",
        "audit",
        "route",
        "rate_limit",
        "last",
    )
    chain.decide(call())
    assert seen == list(chain.step_names)


def test_a_placement_must_name_a_step_and_a_new_name() -> None:
    seen: list[str] = []
    with pytest.raises(PlacementError, match="there is no step named 'authz'") as caught:
        ordered(built_in(seen), [Placement(Recorded("x", seen), "x", after="authz")])
    assert caught.value.index == 0
    with pytest.raises(PlacementError, match="a step is already named 'auth'") as caught:
        ordered(
            built_in(seen), [Placement(Recorded("y", seen), "y", before="auth"), Placement(None, "auth", "y")]
        )
    assert caught.value.index == 1


def test_the_first_refusal_ends_the_chain() -> None:
    seen: list[str] = []
    steps = built_in(seen)
    steps["auth"] = Recorded("auth", seen, Refusal(grpc.StatusCode.UNAUTHENTICATED, "no"))
    verdict = one_chain(ordered(steps, [])).decide(call())
    assert verdict is not None
    assert (verdict.code, verdict.message) == (grpc.StatusCode.UNAUTHENTICATED, "no")
    assert seen == ["metadata", "auth"]


def test_a_step_sees_only_the_methods_it_takes() -> None:
    seen: list[str] = []

    class OnlyListUsers(Recorded):
        def for_method(self, path: str | None) -> OnlyListUsers | None:
            return self if path == LIST_USERS else None

    steps = built_in(seen)
    steps["route"] = OnlyListUsers("route", seen)
    chain = Chain(
        ordered(steps, []),
        {GET_USER: ROUTES.methods[GET_USER], LIST_USERS: ROUTES.methods[LIST_USERS]},
        dict.fromkeys((GET_USER, LIST_USERS), observer()),
        observer(),
    )
    assert chain.of(GET_USER).step_names == ("metadata", "auth", "rate_limit")
    assert chain.of(LIST_USERS).step_names == BUILT_IN_ORDER
    assert chain.of("/no.Such/Path") is chain.unrouted


def test_user_steps_check_routed_methods_only() -> None:
    seen: list[str] = []
    health = "/grpc.health.v1.Health/Check"
    steps = ordered(built_in(seen), [Placement(Recorded("tenant", seen), "tenant", after="auth")])
    chain = Chain(
        steps,
        {GET_USER: ROUTES.methods[GET_USER], health: None},
        dict.fromkeys((GET_USER, health), observer()),
        observer(),
    )
    assert "tenant" in chain.of(GET_USER).step_names
    assert "tenant" not in chain.of(health).step_names
    assert "tenant" not in chain.unrouted.step_names


# Failures of a step.


class Raises:
    name = "raises"

    def check(self, call: Call) -> Refusal | None:
        raise KeyError("a bug")


def test_a_step_that_raises_is_internal_naming_the_step(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    chain = one_chain(ordered(built_in(seen), [Placement(Raises(), "raises", after="auth")]))
    for _ in range(3):
        verdict = chain.decide(call())
        assert verdict is not None
        assert (verdict.code, verdict.message) == (grpc.StatusCode.INTERNAL, "step raises failed")
    # Logged once with its traceback, not once per call.
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1
    assert "KeyError" in caplog.text
    assert seen == ["metadata", "auth"] * 3


class Waits:
    name = "waits"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def check(self, call: Call) -> Refusal | None:
        await asyncio.sleep(self.seconds)
        call.forward("x-waited", "yes")
        return None


async def test_a_waiting_step_runs_on_the_loop_within_its_timeout() -> None:
    seen: list[str] = []
    quick = one_chain(ordered(built_in(seen), [Placement(Waits(0), "waits", after="auth", timeout=1)]))
    assert quick.waits
    facts = call()
    assert await quick.decide_waiting(facts) is None
    assert ("x-waited", "yes") in forwarded(facts)
    slow = one_chain(ordered(built_in(seen), [Placement(Waits(5), "waits", after="auth", timeout=0.05)]))
    verdict = await asyncio.wait_for(slow.decide_waiting(call()), 1)
    assert verdict is not None
    assert (verdict.code, verdict.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "step waits did not answer within 0.05 s",
    )


def test_a_chain_of_plain_steps_never_waits() -> None:
    assert not one_chain(ordered(built_in([]), [])).waits


# What a step may change.


def test_a_step_adds_metadata_for_the_upstream_after_the_callers() -> None:
    facts = call(metadata=(*KEY, ("x-tenant", "acme")))
    facts.client = "demo"
    facts.forward("x-tenant-id", "acme")
    assert forwarded(facts) == (
        ("x-tenant", "acme"),
        ("x-tenant-id", "acme"),
        ("x-client-id", "demo"),
        ("x-request-id", "request-1"),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Tenant", "a"),
        ("grpc-timeout", "1S"),
        ("x-trace-bin", "a"),
        (":path", "/"),
        ("x-note", "é"),
        ("", "a"),
    ],
)
def test_a_step_cannot_add_metadata_grpc_would_refuse(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"may add|printable ASCII"):
        call().forward(name, value)


# The gateway's own steps, as a config compiles them.


@pytest.fixture
def plan(tmp_path: Any) -> Plan:
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml({USERS: "127.0.0.1:1"}, rules=PER_USER_RULE))
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    return load_plan(path, {}, lambda config: quiet)


def get_user(user_id: int, metadata: tuple[tuple[str, str | bytes], ...] = KEY) -> Call:
    body = users_pb2.GetUserRequest(user_id=user_id).SerializeToString()
    facts = Call("grpc", GET_USER, metadata, lambda: "ipv4:10.0.0.9:5555", "r", users_pb2.GetUserRequest)
    facts.first = body
    return facts


def test_the_key_names_the_client(plan: Plan) -> None:
    facts = get_user(101)
    assert plan.chain.of(GET_USER).decide(facts) is None
    assert facts.client == "demo"


@pytest.mark.parametrize(
    ("metadata", "message", "reason"),
    [
        ((), "missing x-api-key metadata", "missing_key"),
        ((("x-api-key", "guess"),), "invalid API key", "invalid_key"),
        (
            (("x-api-key", API_KEY), ("x-api-key", API_KEY)),
            "more than one x-api-key value; send exactly one",
            "several_keys",
        ),
    ],
)
def test_auth_refusals(plan: Plan, metadata: tuple[tuple[str, str], ...], message: str, reason: str) -> None:
    facts = get_user(101, metadata)
    verdict = plan.chain.of(GET_USER).decide(facts)
    assert verdict is not None
    assert (verdict.code, verdict.message) == (grpc.StatusCode.UNAUTHENTICATED, message)
    assert facts.auth_failure == reason
    assert facts.rate_limit is None  # refused before the limiter: no budget spent


def test_allow_lists_and_lockout(tmp_path: Any) -> None:
    path = tmp_path / "gateway.toml"
    reader = f'\n[[api_keys]]\nclient = "reader"\nkey = "reader-key"\nallow = ["{GET_USER}"]\n'
    path.write_text(gateway_toml({USERS: "127.0.0.1:1"}) + reader + "\n[auth]\nmax_failures = 2\n")
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    plan = load_plan(path, {}, lambda config: quiet)
    listing = Call("grpc", LIST_USERS, (("x-api-key", "reader-key"),), lambda: "ipv4:10.0.0.9:5555", "r")
    verdict = plan.chain.of(LIST_USERS).decide(listing)
    assert verdict is not None
    assert (verdict.code, verdict.message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"client reader may not call {LIST_USERS}",
    )
    assert plan.chain.of(GET_USER).decide(get_user(101, (("x-api-key", "reader-key"),))) is None
    for _ in range(2):  # two guesses from one address lock it out, the right key included
        plan.chain.of(GET_USER).decide(get_user(101, (("x-api-key", "guess"),)))
    locked = get_user(101)
    verdict = plan.chain.of(GET_USER).decide(locked)
    assert verdict is not None
    assert verdict.code == grpc.StatusCode.UNAUTHENTICATED
    assert verdict.message.startswith("too many invalid API keys from this address; try again in")
    assert locked.auth_failure == "locked_out"
    assert dict(verdict.trailers)["retry-after"] == "60"


def test_an_unprintable_header_is_refused_before_auth(plan: Plan) -> None:
    facts = get_user(101, (("x-note", "caf\u00e9"),))
    verdict = plan.chain.of(GET_USER).decide(facts)
    assert verdict is not None
    assert verdict.code == grpc.StatusCode.INVALID_ARGUMENT
    assert verdict.message.startswith("metadata x-note has a value that is not printable ASCII")
    assert facts.auth_failure is None


def test_an_unrouted_path_is_unimplemented_after_auth(plan: Plan) -> None:
    facts = Call("grpc", "/shop.Nope/Get", KEY, lambda: "", "r")
    verdict = plan.chain.of("/shop.Nope/Get").decide(facts)
    assert verdict is not None
    assert (verdict.code, verdict.message) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "service shop.Nope is not routed by this gateway",
    )
    assert facts.client == "demo"
    unauthenticated = plan.chain.of("/shop.Nope/Get").decide(
        Call("grpc", "/shop.Nope/Get", (), lambda: "", "r")
    )
    assert unauthenticated is not None
    assert unauthenticated.code == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_key(plan: Plan) -> None:
    health = "/grpc.health.v1.Health/Check"
    assert plan.chain.of(health).step_names == ("metadata",)
    assert plan.chain.of(health).decide(Call("grpc", health, (), lambda: "", "r")) is None


def test_the_limit_counts_each_user_and_says_when_to_come_back(plan: Plan) -> None:
    chain = plan.chain.of(GET_USER)
    assert chain.step_names == (*BUILT_IN_ORDER[:2], "rate_limit")
    assert chain.reads_request
    assert not chain.waits
    for remaining in (4, 3, 2, 1, 0):
        facts = get_user(103)
        assert chain.decide(facts) is None
        assert dict(facts.reply_headers) == {
            "x-ratelimit-limit": "5",
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": "30",
        }
    refused = get_user(103)
    verdict = chain.decide(refused)
    assert verdict is not None
    assert verdict.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert verdict.message == "rate limit exceeded for user_id 103: 5 per 30 seconds, retry in 30 s"
    trailers = dict(verdict.trailers)
    assert trailers["retry-after"] == "30"
    assert trailers["x-ratelimit-remaining"] == "0"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 30
    assert status.details[1].Unpack(quota)
    assert quota.violations[0].subject == "user_id 103"
    assert (refused.rate_limit, refused.limited_by) == ("refused", "per-user")
    # Another user has a budget of their own.
    assert chain.decide(get_user(104)) is None


def test_a_request_that_is_not_a_message_is_invalid_argument(plan: Plan) -> None:
    facts = get_user(101)
    facts.first = b"\xff\xff\xff"
    verdict = plan.chain.of(GET_USER).decide(facts)
    assert verdict is not None
    assert (verdict.code, verdict.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid shop.users.v1.GetUserRequest message",
    )
