"""Rate-limit rules compiled at start-up, counted by the ``limits`` library's async strategies.

This module knows rules, budgets and verdicts; it knows nothing of gRPC. The strategy is chosen
by name and the storage by URI, so memory or Redis, moving or fixed window, is configuration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import limits
import redis.asyncio
from google.protobuf.descriptor import FieldDescriptor
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.config.schema import ConfigError, RateKey, RateLimit, Rule
from gateway.policy.ratelimit.memory import BoundedMemoryStorage
from gateway.routing.table import MethodRoute, RouteTable

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
    # Clients with a rate of their own (a premium key, say).
    overrides: dict[str, limits.RateLimitItem] = field(default_factory=dict)

    def item_for(self, client: str) -> limits.RateLimitItem:
        return self.overrides.get(client, self.item)


@dataclass(frozen=True)
class MethodRule:
    """A rule as it applies to one method: ``field`` is None when the key falls back to the client."""

    rule: CompiledRule
    field: FieldDescriptor | None


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule for one call."""

    rule: CompiledRule
    item: limits.RateLimitItem  # the rate that applied (the rule's, or the client's override)
    subject: str  # whose budget, in words: "user_id 103", "client demo"
    allowed: bool
    remaining: int
    reset_after: float  # seconds until the budget has room again


@dataclass(frozen=True)
class Subject:
    """Whose budget a call is counted against: a storage identifier and the same in words."""

    identifier: str
    label: str


class StoreUnavailable(Exception):
    """The rate-limit storage failed, or did not answer within the storage timeout."""


# Connections to a plain Redis per gateway process; a call waits for a free one.
REDIS_POOL_SIZE = 64


# Connections opened before the first call (see RateLimitPolicy.warm_up).
WARM_CONNECTIONS = 16


# Expired memory-storage keys dropped per tick (see Store.tick).
SWEEP_PER_TICK = 2000


@dataclass(frozen=True)
class Store:
    """A ``limits`` storage; the connection pool behind it when it is a plain Redis; and ``memory``,
    the same storage when it is this process's own."""

    storage: Any
    redis_pool: redis.asyncio.BlockingConnectionPool | None = None
    memory: BoundedMemoryStorage | None = None

    @property
    def waits(self) -> bool:
        """Whether a decision waits on the network (anything but memory)."""
        return self.memory is None

    def tick(self) -> None:
        """The store's periodic job: reclaim expired memory keys, a batch at a time."""
        if self.memory is not None:
            self.memory.sweep(SWEEP_PER_TICK)


def open_storage(uri: str, timeout: float) -> Store:
    """The storage behind a ``storage`` URI. Memory is this process's own; Redis is shared."""
    if uri.startswith("memory://"):
        memory = BoundedMemoryStorage()
        return Store(memory, memory=memory)
    # redis-py rather than limits' default client (coredis): under concurrency coredis was seen
    # losing connections and retrying, and a retried script can count one call twice.
    options: dict[str, Any] = {"implementation": "redispy"}
    pool = None
    if uri.startswith(("redis://", "rediss://")):
        pool = options["connection_pool"] = redis.asyncio.BlockingConnectionPool.from_url(
            uri,
            max_connections=REDIS_POOL_SIZE,
            timeout=timeout,
            # Never retried: a command lost with its connection may already have counted.
            retry=Retry(NoBackoff(), 0),
        )
    try:
        # Wrapped, every backend's failure is one StorageError.
        return Store(storage_from_string(f"async+{uri}", wrap_exceptions=True, **options), pool)
    except (limits.errors.ConfigurationError, ValueError) as error:
        raise ConfigError(f"rate_limit.storage: {error}") from None


class RateLimitPolicy:
    """Which rules cover which method, and the storage their budgets live in."""

    def __init__(
        self, config: RateLimit, routes: RouteTable, clients: Iterable[str], store: Store | None = None
    ) -> None:
        # A reload passes the store on, so budgets already spent stay spent.
        self.store = store if store is not None else open_storage(config.storage, config.storage_timeout)
        self.storage = storage = self.store.storage
        # Memory cannot hang; a network store gets a deadline per call.
        self.timeout = config.storage_timeout if config.shared else None
        self.fail_open = config.on_storage_error == "allow"
        self.storage_uri = config.storage
        known_clients = set(clients)
        self._rules_of: dict[str, tuple[MethodRule, ...]] = {path: () for path in routes.methods}
        for index, rule in enumerate(config.rules):
            compiled = _compile(rule, index, storage, known_clients)
            for path in _covered_methods(rule, index, routes):
                method_rule = MethodRule(compiled, _key_field(rule, index, routes.methods[path]))
                self._rules_of[path] = (*self._rules_of[path], method_rule)

    def rules_for(self, path: str) -> tuple[MethodRule, ...]:
        return self._rules_of.get(path, ())

    async def warm_up(self) -> None:
        """Open connections to a Redis store before calls need them.

        A burst of calls at start-up would otherwise spend its storage timeout on connecting, and be
        let through (or refused) unchecked. A store that cannot be reached now is not an error here:
        calls meet it as configured (on_storage_error).
        """
        pool = self.store.redis_pool
        if pool is None:
            return
        opened = await asyncio.gather(
            *(pool.get_connection() for _ in range(WARM_CONNECTIONS)),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        for connection in opened:
            if not isinstance(connection, BaseException):
                await pool.release(connection)

    async def spend(self, rules: tuple[tuple[MethodRule, Subject], ...], client: str) -> list[Verdict]:
        """Spend one unit of each rule's budget, in order, stopping at the first rule that refuses.

        The last verdict is the refusal, if there is one.

        Raises:
            StoreUnavailable: the storage failed or took longer than the storage timeout in all.
        """
        try:
            if self.timeout is None:
                return await _spend(rules, client)
            async with asyncio.timeout(self.timeout):
                return await _spend(rules, client)
        except TimeoutError:
            raise StoreUnavailable(f"no answer from {self.storage_uri} within {self.timeout} s") from None
        except (StorageError, OSError) as error:
            raise StoreUnavailable(f"{self.storage_uri}: {error}") from error


async def _spend(rules: tuple[tuple[MethodRule, Subject], ...], client: str) -> list[Verdict]:
    verdicts = []
    for method_rule, subject in rules:
        rule = method_rule.rule
        item = rule.item_for(client)
        allowed = await rule.limiter.hit(item, rule.name, subject.identifier)
        stats = await rule.limiter.get_window_stats(item, rule.name, subject.identifier)
        reset_after = max(0.0, stats.reset_time - time.time())
        verdicts.append(Verdict(rule, item, subject.label, allowed, stats.remaining, reset_after))
        if not allowed:
            break
    return verdicts


def _compile(rule: Rule, index: int, storage: Any, clients: set[str]) -> CompiledRule:
    overrides = {}
    for client, rate in rule.overrides.items():
        if client not in clients:
            raise ConfigError(
                f"rate_limit.rules[{index}].overrides: no API key has client name {client!r} "
                f"(known: {', '.join(sorted(clients))})"
            )
        overrides[client] = limits.parse(rate)
    return CompiledRule(
        rule.name, rule.key, limits.parse(rule.rate), STRATEGIES[rule.strategy](storage), overrides
    )


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
