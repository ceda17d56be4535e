"""How each upstream channel is set up: its grpc target, service config, keepalive and reconnect options.

Balancing, retries and keepalive are all left to grpc core, configured here once per channel:
several addresses become one target (``ipv4:A,B``) balanced by grpc's ``round_robin`` policy,
which skips an address while it cannot be connected to; a route's idempotent methods get a
``retryPolicy`` so that grpc core itself retries ``UNAVAILABLE``. No Python code runs per call.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.config.schema import Route, UpstreamKeepalive, UpstreamReconnect
from runtime.addresses import parse_host_port

ChannelOption = tuple[str, str | int]

# Caps retries during an outage (gRPC's retry throttling, like Envoy's retry budget): every failed
# attempt takes a token and every success gives back a tenth of one; below half the tokens, no retries.
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}


def target(addresses: Sequence[str]) -> str:
    """The grpc target for one upstream: the address itself, or ``ipv4:A,B`` / ``ipv6:[A],[B]``.

    A single address goes through grpc's DNS resolver, so a host name with several addresses is
    balanced too. Several addresses are IP literals of one family (checked by the config).
    """
    if len(addresses) == 1:
        return addresses[0]
    host, _ = parse_host_port(addresses[0])
    family = ipaddress.ip_address(host).version
    return f"ipv{family}:" + ",".join(addresses)


def _seconds(value: float) -> str:
    # Service config durations are JSON strings of seconds with an "s" suffix.
    return f"{value:.9f}".rstrip("0").rstrip(".") + "s"


def service_config(routes: Sequence[Route]) -> dict[str, Any]:
    """Round-robin balancing, and a retry policy for the idempotent methods of ``routes``.

    ``routes`` are the routes that share one channel (one upstream).
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    method_configs = []
    for route in routes:
        if route.retry is None:
            continue
        policy = route.retry
        method_configs.append(
            {
                "name": [{"service": route.service, "method": method} for method in policy.methods],
                "retryPolicy": {
                    "maxAttempts": policy.max_attempts,
                    "initialBackoff": _seconds(policy.initial_backoff),
                    "maxBackoff": _seconds(policy.max_backoff),
                    "backoffMultiplier": policy.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    if method_configs:
        config["methodConfig"] = method_configs
        config["retryThrottling"] = RETRY_THROTTLING
    return config


def keepalive_options(keepalive: UpstreamKeepalive) -> list[ChannelOption]:
    """grpc's keepalive channel arguments; none when pings are off (``time = 0``)."""
    if keepalive.time == 0:
        return []
    timeout_ms = max(1, round(keepalive.timeout * 1000))
    return [
        ("grpc.keepalive_time_ms", max(1, round(keepalive.time * 1000))),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # grpc 1.85 closes a connection whose ping goes unanswered after this one, not after the
        # keepalive timeout (default: a minute); without it a frozen upstream was never noticed.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.without_calls)),
    ]


# grpc spreads each reconnect wait by ±20% (its backoff jitter): waits are set this much shorter, so
# that the configured `max` is the longest wait there is.
RECONNECT_JITTER = 0.2


def reconnect_options(reconnect: UpstreamReconnect) -> list[ChannelOption]:
    """grpc's reconnect backoff: without it grpc waits up to 120 s before trying an upstream again."""

    def milliseconds(seconds: float) -> int:
        return max(1, round(seconds * 1000 / (1 + RECONNECT_JITTER)))

    return [
        ("grpc.initial_reconnect_backoff_ms", milliseconds(reconnect.initial)),
        ("grpc.max_reconnect_backoff_ms", milliseconds(reconnect.max)),
    ]


def routes_by_upstream(routes: Iterable[Route]) -> dict[str, list[Route]]:
    """Routes grouped by the upstream they share (one channel each)."""
    grouped: dict[str, list[Route]] = {}
    for route in routes:
        grouped.setdefault(route.upstream, []).append(route)
    return grouped


def channel_options(
    routes: Sequence[Route], keepalive: UpstreamKeepalive, reconnect: UpstreamReconnect
) -> list[ChannelOption]:
    """Every option of the channel that ``routes`` (sharing one upstream) are forwarded over."""
    return [
        ("grpc.service_config", json.dumps(service_config(routes))),
        # The service config above is the whole policy: never one looked up in DNS TXT records.
        ("grpc.service_config_disable_resolution", 1),
        *keepalive_options(keepalive),
        *reconnect_options(reconnect),
    ]
