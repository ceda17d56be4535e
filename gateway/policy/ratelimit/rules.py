"""Rate-limit rules compiled at start-up, and the spending of their budgets.

This module knows rules, budgets and verdicts; it knows nothing of gRPC. The strategy is chosen
by name and the storage by URI, so memory or Redis, moving or fixed window, is configuration. In
memory, the ``limits`` library's strategies count (the moving window, the default, in one step of
the storage's own: ``BoundedMemoryStorage.spend_in_window``); in Redis, one script (``script.py``) does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import limits
from google.protobuf.descriptor import FieldDescriptor
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.config.schema import ConfigError, RateKey, RateLimit, Rule
from gateway.config.secrets import shown_uri
from gateway.policy.ratelimit.access import access
from gateway.policy.ratelimit.memory import BoundedMemoryStorage
from gateway.policy.ratelimit.outage import StoreHealth
from gateway.policy.ratelimit.remote import RedisStore, StoreUnavailable
from gateway.policy.ratelimit.script import STRATEGY_CODES, budget_keys
from gateway.policy.ratelimit.topology import StorageURIError
from gateway.routing.table import MethodRoute, RouteTable

log = logging.getLogger("gateway.ratelimit")

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
    strategy: str
    # Counts in this process: on memory storage, or a shared store's local share while it is down.
    limiter: RateLimiter
    memory: BoundedMemoryStorage  # the limiter's storage
    # Clients with a rate of their own (a premium key, say).
    overrides: dict[str, limits.RateLimitItem] = field(default_factory=dict)
    # on_storage_error = "local": how many replicas split the rate while the shared store is down.
    share: int = 1

    def item_for(self, client: str) -> limits.RateLimitItem:
        return self.overrides.get(client, self.item)

    def local_item_for(self, client: str) -> limits.RateLimitItem:
        """This replica's share of the client's rate (at most the rate, over every replica)."""
        item = self.item_for(client)
        if self.share == 1:
            return item
        return type(item)(item.amount // self.share, item.multiples, item.namespace)

    def script_arguments(self, item: limits.RateLimitItem) -> tuple[bytes, bytes, bytes]:
        """The rule's ARGV for the Redis script: strategy, limit, period in seconds."""
        return (b"%d" % STRATEGY_CODES[self.strategy], b"%d" % item.amount, b"%d" % item.get_expiry())


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


# Expired memory keys dropped per tick (see Store.tick), or per sweep of local budgets.
SWEEP_PER_TICK = 2000

# Seconds between sweeps of the local budgets (on_storage_error = "local"), made by decisions.
LOCAL_SWEEP_SECONDS = 1.0


class Store:
    """Where budgets live: this process's memory, or a shared Redis (``remote``).

    With a shared store, ``memory`` holds the local budgets of ``on_storage_error = "local"``, used
    while the store is down; ``health`` follows the store's failures.
    """

    def __init__(self, remote: RedisStore | None = None) -> None:
        self.memory = BoundedMemoryStorage()
        self.remote = remote
        self.health = StoreHealth(shown_uri(remote.uri)) if remote is not None else None
        self._next_sweep = 0.0

    @property
    def waits(self) -> bool:
        """Whether a decision waits on the network (anything but memory)."""
        return self.remote is not None

    def tick(self) -> None:
        """The store's periodic job, on the thread memory decisions run on: reclaim expired keys."""
        if self.remote is None:
            self.memory.sweep(SWEEP_PER_TICK)

    def close(self) -> None:
        """Close the connections to a shared store (a reload that replaced it, once its calls ended)."""
        if self.remote is not None:
            self.remote.close()

    def sweep_local(self) -> None:
        """Reclaim expired local budgets, now and then: on the event loop, where they are spent."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + LOCAL_SWEEP_SECONDS
            self.memory.sweep(SWEEP_PER_TICK)


def open_storage(config: RateLimit) -> Store:
    """The storage ``config`` names. Memory is this process's own; Redis is shared.

    Raises:
        ConfigError: the URI cannot be used, or a password or TLS file it needs cannot be read.
    """
    if config.storage.startswith("memory://"):
        return Store()
    try:
        return Store(RedisStore(config.storage, access(config)))
    except StorageURIError as error:
        raise ConfigError(f"rate_limit.storage: {error}") from None


def _reached_alike(store: Store, config: RateLimit) -> bool:
    """Whether ``store`` logs in and connects as ``config`` says (a reload keeps it then); the
    passwords are compared as read now, so a changed variable or file takes effect on a reload."""
    if store.remote is None:
        return True
    return store.remote.access == access(config)


class RateLimitPolicy:
    """Which rules cover which method, and the storage their budgets live in."""

    def __init__(
        self,
        config: RateLimit,
        routes: RouteTable,
        clients: Iterable[str] | None,
        store: Store | None = None,
    ) -> None:
        """``clients``: the client names an override may name (None: any, as tokens name clients)."""
        # A reload passes the store on, so budgets already spent stay spent; unless the password or
        # TLS to reach it changed: then a store of its own, which logs in anew.
        if store is None or not _reached_alike(store, config):
            store = open_storage(config)
        self.store = store
        self.timeout = config.storage_timeout
        self.on_storage_error = config.on_storage_error
        self.fail_open = config.on_storage_error == "allow"
        self.storage_uri = shown_uri(config.storage)  # for messages: never the password
        share = config.replicas if config.on_storage_error == "local" and self.store.waits else 1
        known_clients = set(clients) if clients is not None else None
        self._rules_of: dict[str, tuple[MethodRule, ...]] = {path: () for path in routes.methods}
        for index, rule in enumerate(config.rules):
            compiled = _compile(rule, index, self.store.memory, known_clients, share)
            for path in _covered_methods(rule, index, routes):
                method_rule = MethodRule(compiled, _key_field(rule, index, routes.methods[path]))
                self._rules_of[path] = (*self._rules_of[path], method_rule)

    def rules_for(self, path: str) -> tuple[MethodRule, ...]:
        return self._rules_of.get(path, ())

    async def warm_up(self) -> None:
        """Make a shared store ready before calls need it (the gateway says SERVING after this):
        connected, logged in, the script loaded, the topology known (every master of a Cluster).

        A burst of calls at start-up would otherwise spend its storage timeout on connecting, and be
        let through (or refused) unchecked. A store that is not ready within WARM_UP_SECONDS is not
        an error here: calls meet it as configured (on_storage_error), and it is logged.
        """
        remote = self.store.remote
        if remote is not None and not await remote.start():
            log.warning(
                "rate-limit store not ready at start-up; serving: calls meet on_storage_error until it is",
                extra={"storage": self.storage_uri, "on_storage_error": self.on_storage_error},
            )

    async def spend(self, rules: tuple[tuple[MethodRule, Subject], ...], client: str) -> list[Verdict]:
        """Spend one unit of each rule's budget, in order, stopping at the first rule that refuses.

        The last verdict is the refusal, if there is one.

        Raises:
            StoreUnavailable: the storage failed or took longer than the storage timeout in all
                (already counted and logged).
        """
        store = self.store
        remote = store.remote
        if remote is None:
            return await _spend(rules, client)
        assert store.health is not None
        started = time.perf_counter()
        try:
            async with remote.within(self.timeout):
                verdicts = await _spend_remote(remote, rules, client)
        except TimeoutError:
            failure = StoreUnavailable(
                f"no answer from {self.storage_uri} within {self.timeout} s", "timeout"
            )
        except StoreUnavailable as error:
            failure = error
        except Exception as error:  # whatever else fails on the way is the store's failure too
            failure = StoreUnavailable(f"{self.storage_uri}: {type(error).__name__}: {error}", "unexpected")
        else:
            store.health.answered(time.perf_counter() - started)
            if store.memory.windows or store.memory.storage:  # local budgets left by an outage
                store.sweep_local()
            return verdicts
        store.health.failed(failure.kind, str(failure), time.perf_counter() - started, self.on_storage_error)
        raise failure

    async def spend_locally(
        self, rules: tuple[tuple[MethodRule, Subject], ...], client: str
    ) -> list[Verdict]:
        """Spend this replica's share of each budget, in memory (the shared store is down)."""
        self.store.sweep_local()
        return await _spend(rules, client, local=True)


async def _spend(
    rules: tuple[tuple[MethodRule, Subject], ...], client: str, local: bool = False
) -> list[Verdict]:
    verdicts = []
    for method_rule, subject in rules:
        rule = method_rule.rule
        item = rule.local_item_for(client) if local else rule.item_for(client)
        if rule.strategy == "moving-window":  # the default: one step on the storage, not two
            key = item.key_for(rule.name, subject.identifier)
            allowed, remaining, reset_time = rule.memory.spend_in_window(key, item.amount, item.get_expiry())
        else:
            allowed = await rule.limiter.hit(item, rule.name, subject.identifier)
            stats = await rule.limiter.get_window_stats(item, rule.name, subject.identifier)
            remaining, reset_time = stats.remaining, stats.reset_time
        reset_after = max(0.0, reset_time - time.time())
        verdicts.append(Verdict(rule, item, subject.label, allowed, remaining, reset_after))
        if not allowed:
            break
    return verdicts


async def _spend_remote(
    remote: RedisStore, rules: tuple[tuple[MethodRule, Subject], ...], client: str
) -> list[Verdict]:
    """One script call for all the rules on one server; in a Cluster, one per rule, in order."""
    groups = (rules,) if remote.one_server else tuple((rule,) for rule in rules)
    verdicts = []
    for group in groups:
        keys: list[bytes] = []
        arguments: list[bytes] = []
        items = []
        for method_rule, subject in group:
            rule = method_rule.rule
            item = rule.item_for(client)
            items.append(item)
            keys.extend(budget_keys(item.key_for(rule.name, subject.identifier)))
            arguments.extend(rule.script_arguments(item))
        outcomes = await remote.spend(keys, arguments)
        for (method_rule, subject), item, (allowed, remaining, reset_ms) in zip(
            group, items, outcomes, strict=False
        ):
            verdicts.append(
                Verdict(method_rule.rule, item, subject.label, allowed, remaining, reset_ms / 1000)
            )
        if not outcomes[-1][0]:
            break
    return verdicts


def _compile(
    rule: Rule, index: int, storage: BoundedMemoryStorage, clients: set[str] | None, share: int
) -> CompiledRule:
    overrides = {}
    for client, rate in rule.overrides.items():
        if clients is not None and client not in clients:
            raise ConfigError(
                f"rate_limit.rules[{index}].overrides: no API key has client name {client!r} "
                f"(known: {', '.join(sorted(clients))})"
            )
        overrides[client] = _split(limits.parse(rate), share, f"rate_limit.rules[{index}].overrides.{client}")
    item = _split(limits.parse(rule.rate), share, f"rate_limit.rules[{index}].rate")
    limiter = STRATEGIES[rule.strategy](storage)
    return CompiledRule(rule.name, rule.key, item, rule.strategy, limiter, storage, overrides, share)


def _split(item: limits.RateLimitItem, share: int, field: str) -> limits.RateLimitItem:
    """``item``, checked to leave every one of ``share`` replicas at least one call in local mode."""
    if item.amount < share:
        raise ConfigError(
            f"{field}: {describe_rate(item)} cannot be split over rate_limit.replicas = {share} "
            f'for on_storage_error = "local" (a replica would get no call at all); lower replicas, '
            "raise the rate, or choose allow or deny"
        )
    return item


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
