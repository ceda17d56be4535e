"""The chain's ``rate_limit`` step: spends one unit of every covering rule's budget, or refuses.

A refusal is RESOURCE_EXHAUSTED with ``retry-after``, ``x-ratelimit-*`` and ``RetryInfo`` +
``QuotaFailure`` in ``grpc-status-details-bin``; a call that passes gets ``x-ratelimit-*`` in its
reply headers. A rule keyed by a request field reads the (first) request, decoded once.

On memory storage a decision never waits, so the step's check is plain ``def`` and runs inline on
the door's thread; on a shared store (Redis) it is ``async def`` and runs on the event loop,
bounded by the storage timeout. When the store fails, ``on_storage_error`` decides: allow the call,
refuse it UNAVAILABLE, or count it against this replica's share of the budget (``local``).
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.call.metadata import API_KEY_HEADER
from gateway.call.peers import peer_address
from gateway.call.step import Call, Metadata, Refusal
from gateway.policy.auth.jwt.claims import as_text, claim_at
from gateway.policy.ratelimit.remote import StoreUnavailable
from gateway.policy.ratelimit.rules import MethodRule, RateLimitPolicy, Subject, Verdict, describe_rate
from gateway.routing.table import RouteTable


def _subject(method_rule: MethodRule, call: Call, message: Message | None, client: str) -> Subject:
    key = method_rule.rule.key
    if key.kind == "peer":
        host = peer_address(call.peer())
        return Subject(f"peer={host}", f"peer {host}")
    if key.kind == "metadata":
        for name, value in call.metadata:
            if name == key.name and name != API_KEY_HEADER:
                return Subject(f"{name}={value!s}", f"{name} {value!s}")
    if key.kind == "claim" and call.claims is not None:
        claim = claim_at(call.claims, key.name)
        if claim is not None:
            text = as_text(claim)
            return Subject(f"claim:{key.name}={text}", f"{key.name} {text}")
    field = method_rule.field
    if field is not None and message is not None:
        value = getattr(message, field.name)
        is_set = message.HasField(field.name) if field.has_presence else value != field.default_value
        if is_set:
            return Subject(f"{field.name}={value}", f"{field.name} {value}")
    return Subject(f"client={client}", f"client {client}")


def _headers(verdict: Verdict) -> Metadata:
    return (
        ("x-ratelimit-limit", str(verdict.item.amount)),
        ("x-ratelimit-remaining", str(verdict.remaining)),
        ("x-ratelimit-reset", str(math.ceil(verdict.reset_after))),
    )


def _refusal_trailers(verdict: Verdict, message: str, retry_after: int) -> Metadata:
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


class _MethodLimit:
    """The rate-limit check of one method: its rules, and whether they read the request."""

    name = "rate_limit"

    def __init__(self, rules: tuple[MethodRule, ...], policy: RateLimitPolicy) -> None:
        self._rules = rules
        self._policy = policy
        self.reads_request = any(rule.field is not None for rule in rules)

    async def _decide(self, call: Call) -> Refusal | None:
        """Spend the call's budget; sets the call's reply headers and its rate-limit outcome.

        Raises:
            BadRequest: a rule is keyed by a field and the request is not a valid message.
        """
        message = call.message() if self.reads_request else None
        client = call.client or ""
        subjects = tuple((rule, _subject(rule, call, message, client)) for rule in self._rules)
        policy = self._policy
        try:
            verdicts = await policy.spend(subjects, client)
        except StoreUnavailable:
            call.rate_limit = "store_error"
            if policy.on_storage_error == "local":
                verdicts = await policy.spend_locally(subjects, client)
            elif policy.fail_open:
                return None
            else:
                return Refusal(grpc.StatusCode.UNAVAILABLE, "rate-limit store unavailable")
        last = verdicts[-1]
        if not last.allowed:
            retry_after = max(1, math.ceil(last.reset_after))
            rate = describe_rate(last.item)
            text = f"rate limit exceeded for {last.subject}: {rate}, retry in {retry_after} s"
            call.rate_limit = "refused"
            call.limited_by = last.rule.name
            return Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, text, _refusal_trailers(last, text, retry_after)
            )
        call.reply_headers = _headers(min(verdicts, key=lambda v: v.remaining))
        return None


class _InlineMethodLimit(_MethodLimit):
    """On memory storage: the decision never waits, so it runs to its end here and now."""

    def check(self, call: Call) -> Refusal | None:
        return _run_inline(self._decide(call))


class _WaitingMethodLimit(_MethodLimit):
    """On a shared store: the decision waits on the network, on the event loop."""

    async def check(self, call: Call) -> Refusal | None:
        return await self._decide(call)


def _run_inline(coroutine: Coroutine[Any, Any, Refusal | None]) -> Refusal | None:
    """Run a coroutine that never suspends (a decision on memory storage) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Refusal | None = done.value
        return result
    coroutine.close()
    raise RuntimeError("a rate-limit decision on memory storage waited")


class RateLimit:
    """The ``rate_limit`` step: for each method that some rule covers, that method's check."""

    name = "rate_limit"

    def __init__(self, policy: RateLimitPolicy, routes: RouteTable) -> None:
        kind = _WaitingMethodLimit if policy.store.waits else _InlineMethodLimit
        self._checks: dict[str, _MethodLimit] = {
            path: kind(policy.rules_for(path), policy) for path in routes.methods if policy.rules_for(path)
        }

    def for_method(self, path: str | None) -> _MethodLimit | None:
        return None if path is None else self._checks.get(path)
