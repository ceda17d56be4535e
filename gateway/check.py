"""``grpc-gateway --check``: load a config as a start would, print what it would serve, listen on nothing.

Like ``nginx -t`` or ``envoy --mode validate``: the config, its descriptor sets, key files, JWKS
caches and user steps are all loaded; every problem is printed with its field (exit 2), or a
summary of the listeners, routes, rules and chain (exit 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from gateway.config.schema import ConfigError
from gateway.config.secrets import shown_uri
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import Plan, load_plan


def _observability(config: Any) -> Observability:
    """The access log only (its file is opened, as a start would): no metrics listener, no exporter."""
    return Observability(None, None, AccessLog(config.access_log), None)


def check(path: Path, overrides: dict[str, Any], out: TextIO, err: TextIO) -> int:
    """Load ``path`` and print its summary to ``out`` (0), or every problem found to ``err`` (2)."""
    try:
        plan = load_plan(path, overrides, _observability)
    except ConfigError as error:
        print(f"grpc-gateway: config {path}: {len(error.problems)} problem(s)", file=err)
        for problem in error.problems:
            print(f"  {problem}", file=err)
        return 2
    plan.observability.access_log.close()
    print(summary(path, plan), file=out)
    return 0


def summary(path: Path, plan: Plan) -> str:
    """What a gateway started with ``plan`` would serve, one fact a line."""
    config = plan.config
    tls = "TLS" + (" with client certificates (mTLS)" if config.tls and config.tls.client_ca else "")
    lines = [
        f"config {path}: ok",
        "listeners:",
        f"  gRPC      {config.listen} ({tls if config.tls else 'plaintext'}, engine {config.engine})",
    ]
    if config.http.listen is not None:
        lines.append(f"  HTTP      {config.http.listen} (JSON, gRPC-Web, /docs)")
    if config.metrics_listen is not None:
        lines.append(f"  metrics   {config.metrics_listen} (/metrics)")
    lines.append("routes:")
    for route in config.routes:
        methods = plan.routes.method_names(route.service)
        upstream = ", ".join(route.upstreams) + (" (TLS)" if route.tls is not None else "")
        lines.append(
            f"  {route.service} -> {upstream} ({len(methods)} method{'' if len(methods) == 1 else 's'})"
        )
    lines.append(f"rate limits (storage {shown_uri(config.rate_limit.storage)}):")
    for rule in config.rate_limit.rules:
        scope = ", ".join(rule.scope) or "every routed service"
        lines.append(f"  {rule.name}: {rule.rate} per {rule.key}, {rule.strategy}, on {scope}")
    if not config.rate_limit.rules:
        lines.append("  none")
    names = [key.client for key in config.api_keys]
    lines.append(f"clients: {len(names)} API key(s) ({', '.join(names) or 'none'})")
    for provider in config.auth.jwt:
        lines.append(f"  tokens from {provider.issuer}")
    lines.append("chain: " + " -> ".join(plan.chain.step_names))
    return "\n".join(lines)
