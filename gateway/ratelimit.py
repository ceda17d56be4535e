"""The rate-limit interceptor: runs after auth, spends budget, refuses with RESOURCE_EXHAUSTED.

An interceptor sees no request message, so for methods with rules it wraps the handler: the
wrapper reads the first request (decoding it only when a rule is keyed by one of its fields),
spends one unit of each covering rule's budget, and either refuses or calls on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway import callstate, observe
from gateway.callstate import Behavior, Continuation, Metadata
from gateway.limiter import MethodRule, RateLimitPolicy, StoreUnavailable, Subject, Verdict, describe_rate
from gateway.peers import peer_address
from gateway.proxy import API_KEY_HEADER
from gateway.routes import MethodRoute, RouteTable

log = logging.getLogger(__name__)


def _subject(method_rule: MethodRule, call: CallFacts, message: Message | None, client: str) -> Subject:
    key = method_rule.rule.key
    if key.kind == "peer":
        host = peer_address(call.peer())
        return Subject(f"peer={host}", f"peer {host}")
    if key.kind == "metadata":
        for name, value in call.metadata or ():
            if name == key.name and name != API_KEY_HEADER:
                return Subject(f"{name}={value!s}", f"{name} {value!s}")
    field = method_rule.field
    if field is not None and message is not None:
        value = getattr(message, field.name)
        is_set = message.HasField(field.name) if field.has_presence else value != field.default_value
        if is_set:
            return Subject(f"{field.name}={value}", f"{field.name} {value}")
    return Subject(f"client={client}", f"client {client}")


@dataclass(frozen=True)
class CallFacts:
    """What the limiter may key a budget by, whichever engine carries the call."""

    metadata: Metadata | None
    peer: Callable[[], str]  # grpc's peer string; asked for only by rules keyed by peer
    client: str


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one call: reply headers to add, or the status to refuse it with."""

    headers: Metadata = ()
    code: grpc.StatusCode | None = None  # None: admitted
    message: str = ""
    trailers: Metadata = ()
    refused_by: str | None = None  # the rule whose budget was spent out
    store_error: bool = False


def _headers(verdict: Verdict) -> callstate.Metadata:
    return (
        ("x-ratelimit-limit", str(verdict.item.amount)),
        ("x-ratelimit-remaining", str(verdict.remaining)),
        ("x-ratelimit-reset", str(math.ceil(verdict.reset_after))),
    )


def _refusal_trailers(verdict: Verdict, message: str, retry_after: int) -> callstate.Metadata:
    retry_info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
    quota_failure = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=verdict.subject,
                description=f"rule {verdict.rule.name}: {describe_rate(verdict.item)}",
            )
        ]
    )
    details = []
    for detail in (retry_info, quota_failure):
        packed = AnyMessage()
        packed.Pack(detail)
        details.append(packed)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=details)
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("retry-after", str(retry_after)),
        *_headers(verdict),
    )


class _StoreFailureLog:
    """Logs storage failures once per interval, with how many calls they touched, not once per call."""

    INTERVAL = 10.0

    def __init__(self, fail_open: bool) -> None:
        self._outcome = "allowed" if fail_open else "refused with UNAVAILABLE"
        self._next_log = 0.0
        self._unlogged = 0

    def report(self, error: StoreUnavailable) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now >= self._next_log:
            log.warning(
                "rate-limit store unavailable",
                extra={"error": str(error), "calls": self._unlogged, "calls_were": self._outcome},
            )
            self._next_log = now + self.INTERVAL
            self._unlogged = 0


class MethodGuard:
    """Admits or refuses the calls of one method; built once per method."""

    def __init__(self, route: MethodRoute, policy: RateLimitPolicy, failures: _StoreFailureLog) -> None:
        self._route = route
        self._policy = policy
        self._failures = failures
        rules = policy.rules_for(route.path)
        self._rules = rules
        self._decode = any(rule.field is not None for rule in rules)
        self._cache: tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler] | None = None

    @property
    def reads_request(self) -> bool:
        """Whether a rule is keyed by a request field: the (first) request is needed to decide."""
        return self._decode

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if self._cache is not None and self._cache[0] is handler:
            return self._cache[1]
        if self._route.client_streaming:
            attribute = "stream_stream" if self._route.server_streaming else "stream_unary"
            wrapped = handler._replace(**{attribute: self._streamed_request(getattr(handler, attribute))})
        else:
            attribute = "unary_stream" if self._route.server_streaming else "unary_unary"
            wrapped = handler._replace(**{attribute: self._unary_request(getattr(handler, attribute))})
        self._cache = (handler, wrapped)
        return wrapped

    def _unary_request(self, behavior: Behavior) -> Behavior:
        async def guarded(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, request)
            return await behavior(request, context)

        return guarded

    def _streamed_request(self, behavior: Behavior) -> Behavior:
        if not self._decode:

            async def guarded(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                await self._admit(context, None)
                return await behavior(requests, context)

            return guarded

        async def guarded_by_first(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            iterator = aiter(requests)
            first = await anext(iterator, None)
            await self._admit(context, first)
            return await behavior(_prepend(first, iterator), context)

        return guarded_by_first

    async def _admit(self, context: grpc.aio.ServicerContext, raw: bytes | None) -> None:
        facts = CallFacts(context.invocation_metadata(), context.peer, callstate.client_name.get())
        decision = await self.decide(facts, raw)
        if decision.store_error:
            observe.current().store_error()
        if decision.refused_by is not None:
            await observe.current().rate_limited(context, decision.refused_by)
        if decision.code is not None:
            await context.abort(decision.code, decision.message, decision.trailers)
        callstate.reply_headers.set(decision.headers)

    async def decide(self, call: CallFacts, raw: bytes | None) -> Decision:
        """Spend the call's budget; ``raw`` is its (first) request, decoded only if a rule needs it.

        With memory storage this never suspends, so an engine without an event loop may run it
        to completion with one ``send(None)`` (see gateway/core.py).
        """
        message = None
        if self._decode and raw is not None:
            try:
                message = self._route.request_type.FromString(raw)
            except DecodeError:
                expected = self._route.request_type.DESCRIPTOR.full_name
                return Decision(
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                    message=f"the request is not a valid {expected} message",
                )
        subjects = tuple((rule, _subject(rule, call, message, call.client)) for rule in self._rules)
        try:
            verdicts = await self._policy.spend(subjects, call.client)
        except StoreUnavailable as error:
            self._failures.report(error)
            if self._policy.fail_open:
                return Decision(store_error=True)
            return Decision(
                code=grpc.StatusCode.UNAVAILABLE, message="rate-limit store unavailable", store_error=True
            )
        last = verdicts[-1]
        if not last.allowed:
            retry_after = max(1, math.ceil(last.reset_after))
            rate = describe_rate(last.item)
            text = f"rate limit exceeded for {last.subject}: {rate}, retry in {retry_after} s"
            return Decision(
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                message=text,
                trailers=_refusal_trailers(last, text, retry_after),
                refused_by=last.rule.name,
            )
        return Decision(headers=_headers(min(verdicts, key=lambda v: v.remaining)))


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


def method_guards(policy: RateLimitPolicy, routes: RouteTable) -> dict[str, MethodGuard]:
    """The guard of every routed method that some rule covers, by path."""
    failures = _StoreFailureLog(policy.fail_open)
    return {
        path: MethodGuard(route, policy, failures)
        for path, route in routes.methods.items()
        if policy.rules_for(path)
    }


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Spends and checks rate-limit budget for every routed call that some rule covers."""

    def __init__(self, policy: RateLimitPolicy, routes: RouteTable) -> None:
        self._guards = method_guards(policy, routes)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        guard = self._guards.get(handler_call_details.method)
        if guard is None or handler is None:
            return handler
        return guard.wrap(handler)
