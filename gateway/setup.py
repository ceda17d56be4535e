"""Everything the gateway builds from one config file before anything listens; also what a reload builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.limiter import RateLimitPolicy
from gateway.routes import RouteTable, build_routes, load_catalog
from gateway.security import Security, load_security


@dataclass(frozen=True)
class Setup:
    config: GatewayConfig
    routes: RouteTable
    policy: RateLimitPolicy
    security: Security


def load_setup(path: Path, overrides: dict[str, Any], previous: Setup | None = None) -> Setup:
    """Read, check and compile ``path`` with the command line's ``overrides`` applied.

    With ``previous`` (a reload), budgets live on: the same storage is kept when its URI is
    unchanged, and rules are counted by name, so what was spent stays spent.

    Raises:
        ConfigError: naming the field at fault.
    """
    config = load_config(path)
    if overrides:
        config = config.model_copy(update=overrides)
    routes = build_routes(config, load_catalog(config))
    store = None
    if previous is not None and previous.config.rate_limit.storage == config.rate_limit.storage:
        store = previous.policy.store
    policy = RateLimitPolicy(
        config.rate_limit, routes, clients=(key.client for key in config.api_keys), store=store
    )
    return Setup(config, routes, policy, load_security(config, routes))
