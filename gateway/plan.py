"""Everything the gateway builds from one config file before anything listens: the plan calls run on.

A plan is immutable. A reload (SIGHUP) builds a whole new one from the file and the engine swaps
it in with one assignment; calls in flight finish on the plan they started with.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.call.chain import Chain, Placement, PlacementError, ordered
from gateway.call.metadata import MetadataCheck
from gateway.call.route import RouteCheck
from gateway.call.step import step_name
from gateway.config.schema import ConfigError, GatewayConfig, Limits, StepConfig, load_config
from gateway.ops.observe import CallObservers, Observability
from gateway.ops.own_services import OwnMethod, every_own_path, keyless_paths, own_methods, public_services
from gateway.policy.auth.authenticator import ApiKeyAuth, Authenticator
from gateway.policy.auth.clients import Client, load_clients
from gateway.policy.auth.credentials import Credentials, credential_kinds
from gateway.policy.auth.jwt.providers import TokenKeys, load_tokens
from gateway.policy.auth.jwt.step import TokenAuth
from gateway.policy.auth.lockout import FailedAuthLockout
from gateway.policy.ratelimit.decision import RateLimit
from gateway.policy.ratelimit.rules import RateLimitPolicy
from gateway.routing.health import Upstreams
from gateway.routing.http.bindings import HttpRoutes
from gateway.routing.table import RouteTable, build_routes, load_catalog
from gateway.routing.tls import UpstreamTransport, server_credentials, upstream_transports


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC server options for the size limits."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        # gRPC refuses metadata between its soft and hard limits at random; equal limits make the
        # refusal certain, so that a call is either always accepted or always refused.
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
    ]


@dataclass(frozen=True)
class Plan:
    config: GatewayConfig
    routes: RouteTable
    policy: RateLimitPolicy
    clients: dict[bytes, Client]
    own: dict[str, OwnMethod]  # the gateway's own paths it serves
    chain: Chain
    observability: Observability
    # None: the listener is plaintext.
    server_credentials: grpc.ServerCredentials | None
    # By upstream address; an upstream not here is reached in plaintext.
    upstream_transports: dict[str, UpstreamTransport]
    # The HTTP/JSON door's routes (checked even while [http] listen is unset).
    http_routes: HttpRoutes
    # The key sets of the [[auth.jwt]] providers: started and stopped by the app.
    token_keys: TokenKeys

    @property
    def server_options(self) -> list[tuple[str, int]]:
        return server_options(self.config.limits)

    def open_upstreams(self, blocking: bool = False) -> Upstreams:
        """Channels to every upstream, as the config sets them up: grpc.aio's (inside the running
        loop), or with ``blocking`` grpc's blocking API's."""
        config = self.config
        return Upstreams(
            config.routes,
            config.upstream_keepalive,
            config.upstream_reconnect,
            self.upstream_transports,
            blocking,
        )

    def tick(self) -> None:
        """The periodic jobs, run by the engine on the thread its calls are decided on, every 0.25 s:
        access-log lines out, expired memory budgets reclaimed."""
        self.observability.access_log.flush()
        self.policy.store.tick()


def _user_step(index: int, step: StepConfig) -> Placement:
    field = f"steps[{index}]"
    module_name, _, class_name = step.use.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of the user's module is a config error
        raise ConfigError(
            f"{field}.use: cannot import {module_name} ({type(error).__name__}: {error})"
        ) from None
    factory = getattr(module, class_name, None)
    if factory is None:
        raise ConfigError(f"{field}.use: {module_name} has no {class_name}")
    try:
        instance: Any = factory(**step.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{field}.options: {class_name} rejects its options: {error}") from None
    if not callable(getattr(instance, "check", None)):
        raise ConfigError(f"{field}.use: {step.use} has no check(call) method; see gateway/call/step.py")
    return Placement(instance, step.name or step_name(instance), step.after, step.before, step.timeout)


def _user_steps(config: GatewayConfig) -> list[Placement]:
    return [_user_step(index, step) for index, step in enumerate(config.steps)]


def chain_steps(
    config: GatewayConfig,
    routes: RouteTable,
    policy: RateLimitPolicy,
    clients: dict[bytes, Client],
    tokens: TokenAuth | None = None,
) -> list[Placement]:
    """Every step of the chain in order: the gateway's own, and the config's where it puts them."""
    lockout = FailedAuthLockout(config.auth.max_failures, config.auth.failure_window)
    keys = ApiKeyAuth(Authenticator(clients, public_services(config), lockout))
    built_in = {
        "metadata": MetadataCheck(),
        "auth": Credentials(keys, tokens, *credential_kinds(config), keyless_paths(config)),
        "route": RouteCheck(routes),
        "rate_limit": RateLimit(policy, routes),
    }
    try:
        return ordered(built_in, _user_steps(config))
    except PlacementError as error:
        field = "after" if config.steps[error.index].after is not None else "before"
        raise ConfigError(f"steps[{error.index}].{field}: {error}") from None


def build_chain(
    config: GatewayConfig,
    routes: RouteTable,
    policy: RateLimitPolicy,
    steps: list[Placement],
    observability: Observability,
) -> Chain:
    """The chain of every method the gateway answers, observed as configured."""
    own = own_methods(config)
    observers = CallObservers(
        routes,
        lambda path: bool(policy.rules_for(path)),
        own,
        observability.metrics,
        observability.access_log,
        observability.tracer,
    )
    paths: dict[str, Any] = {**dict.fromkeys(own), **routes.methods}
    return Chain(steps, paths, observers.methods, observers.unrouted)


def load_plan(
    path: Path,
    overrides: dict[str, Any],
    observability: Callable[[GatewayConfig], Observability],
    previous: Plan | None = None,
) -> Plan:
    """Read, check and compile ``path`` with the command line's ``overrides`` applied.

    ``observability`` gives the metrics and access log for the config, once everything else in it
    has been checked (so a bad key is reported before a log file is opened). With ``previous`` (a
    reload), budgets live on: the same storage is kept when its URI is unchanged, and rules are
    counted by name, so what was spent stays spent.

    Raises:
        ConfigError: naming the field at fault.
    """
    config = load_config(path)
    overrides = dict(overrides)
    http_listen = overrides.pop("http_listen", None)
    if http_listen is not None:
        overrides["http"] = config.http.model_copy(update={"listen": http_listen})
    if overrides:
        config = config.model_copy(update=overrides)
    routes = build_routes(config, load_catalog(config))
    store = None
    if previous is not None and previous.config.rate_limit.storage == config.rate_limit.storage:
        store = previous.policy.store
    # Tokens name clients the config cannot list: an override may be for any client name then.
    known_clients = None if config.auth.jwt else [key.client for key in config.api_keys]
    policy = RateLimitPolicy(config.rate_limit, routes, clients=known_clients, store=store)
    clients = load_clients(config.api_keys, routes, always_allowed=every_own_path())
    tokens, token_keys = load_tokens(config, routes, previous.token_keys if previous is not None else None)
    credentials = server_credentials(config.tls)
    transports = upstream_transports(config.routes)
    http_routes = HttpRoutes(routes, config.http.routes)
    steps = chain_steps(config, routes, policy, clients, tokens)
    observed = observability(config)
    if policy.store.health is not None:
        policy.store.health.watch(observed.metrics)  # the store's failures and mode, as metrics
    token_keys.watch(observed.metrics)  # JWKS fetches, failures and the keys' age, as metrics
    return Plan(
        config=config,
        routes=routes,
        policy=policy,
        clients=clients,
        own=own_methods(config),
        chain=build_chain(config, routes, policy, steps, observed),
        observability=observed,
        server_credentials=credentials,
        upstream_transports=transports,
        http_routes=http_routes,
        token_keys=token_keys,
    )


# What a reload calls: the previous plan in, the new one out (ConfigError: the old one stays).
Reloader = Callable[[Plan], Plan]
