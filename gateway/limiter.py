"""Rate-limit rules compiled at start-up, counted by the ``limits`` library's async strategies.

This module knows rules, budgets and verdicts; it knows nothing of gRPC. The strategy is chosen
by name and the storage by URI, so memory or Redis, moving or fixed window, is configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import limits
from google.protobuf.descriptor import FieldDescriptor
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string

from gateway.config import ConfigError, RateKey, RateLimit, Rule
from gateway.routes import MethodRoute, RouteTable

STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


def describe_rate(item: limits.RateLimitItem) -> str:
    """``5 per 30 seconds``, ``1000 per minute``."""
    unit = item.GRANULARITY.name
    if item.multiples == 1:
        return f"{item.amount} per {unit}"
    return f"{item.amount} per {item.multiples} {unit}s"


@dataclass(frozen=True)
class CompiledRule:
    name: str
    key: RateKey
    item: limits.RateLimitItem
    limiter: RateLimiter
    rate_text: str


@dataclass(frozen=True)
class MethodRule:
    """A rule as it applies to one method: ``field`` is None when the key falls back to the client."""

    rule: CompiledRule
    field: FieldDescriptor | None


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule for one call."""

    rule: CompiledRule
    subject: str  # whose budget, in words: "user_id 103", "client demo"
    allowed: bool
    remaining: int
    reset_after: float  # seconds until the budget has room again


@dataclass(frozen=True)
class Subject:
    """Whose budget a call is counted against: a storage identifier and the same in words."""

    identifier: str
    label: str


class RateLimitPolicy:
    """Which rules cover which method, and the shared storage their budgets live in."""

    def __init__(self, config: RateLimit, routes: RouteTable) -> None:
        storage = storage_from_string(f"async+{config.storage}")
        self._rules_of: dict[str, tuple[MethodRule, ...]] = {path: () for path in routes.methods}
        for index, rule in enumerate(config.rules):
            compiled = _compile(rule, storage)
            for path in _covered_methods(rule, index, routes):
                method_rule = MethodRule(compiled, _key_field(rule, index, routes.methods[path]))
                self._rules_of[path] = (*self._rules_of[path], method_rule)

    def rules_for(self, path: str) -> tuple[MethodRule, ...]:
        return self._rules_of.get(path, ())


async def spend(rules: tuple[tuple[MethodRule, Subject], ...]) -> list[Verdict]:
    """Spend one unit of each rule's budget, in order, stopping at the first rule that refuses.

    The last verdict is the refusal, if there is one.
    """
    verdicts = []
    for method_rule, subject in rules:
        rule = method_rule.rule
        allowed = await rule.limiter.hit(rule.item, rule.name, subject.identifier)
        stats = await rule.limiter.get_window_stats(rule.item, rule.name, subject.identifier)
        reset_after = max(0.0, stats.reset_time - time.time())
        verdicts.append(Verdict(rule, subject.label, allowed, stats.remaining, reset_after))
        if not allowed:
            break
    return verdicts


def _compile(rule: Rule, storage: Any) -> CompiledRule:
    item = limits.parse(rule.rate)
    return CompiledRule(rule.name, rule.key, item, STRATEGIES[rule.strategy](storage), describe_rate(item))


def _covered_methods(rule: Rule, index: int, routes: RouteTable) -> list[str]:
    if not rule.scope:
        return list(routes.methods)
    covered: list[str] = []
    for position, entry in enumerate(rule.scope):
        if entry in routes.methods:
            covered.append(entry)
        elif entry in routes.upstream_of:
            covered.extend(path for path in routes.methods if path.startswith(f"/{entry}/"))
        else:
            raise ConfigError(
                f"rate_limit.rules[{index}].scope[{position}]: {entry!r} is neither a routed service "
                "nor a routed method (write a full service name or /package.Service/Method)"
            )
    return covered


def _key_field(rule: Rule, index: int, method: MethodRoute) -> FieldDescriptor | None:
    if rule.key.kind != "field":
        return None
    field = method.request_type.DESCRIPTOR.fields_by_name.get(rule.key.name)
    if field is None:
        return None
    if field.is_repeated or field.message_type is not None:
        raise ConfigError(
            f"rate_limit.rules[{index}].key: field {rule.key.name!r} of "
            f"{method.request_type.DESCRIPTOR.full_name} is not a single scalar value; "
            "key by a scalar field such as an id"
        )
    return cast(FieldDescriptor, field)
