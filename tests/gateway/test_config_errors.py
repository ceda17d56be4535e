"""A bad config names the field and the problem, and the gateway exits 2 before listening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.configs import PER_USER_RULE, USERS, gateway_toml, write_config

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

GOOD_ROUTES = {USERS: "127.0.0.1:50051"}

CASES = {
    "unknown field": (
        gateway_toml(GOOD_ROUTES, extra='listen_adress = "127.0.0.1:1"'),
        "listen_adress: unknown field",
    ),
    "bad rate": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE.replace("5/30 seconds", "5 every fortnight")),
        "rate_limit.rules[0].rate: '5 every fortnight' is not a rate",
    ),
    "bad key": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE.replace("field:user_id", "user_id")),
        "rate_limit.rules[0].key: 'user_id' is not a rate-limit key; use 'client', 'peer'",
    ),
    "bad strategy": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE.replace("moving-window", "leaky-bucket")),
        "rate_limit.rules[0].strategy: Input should be 'moving-window', 'sliding-window-counter' or "
        "'fixed-window'",
    ),
    "unknown engine": (
        gateway_toml(GOOD_ROUTES, extra='engine = "turbo"'),
        "engine: Input should be 'native' or 'aio'",
    ),
    "bad upstream address": (
        gateway_toml({USERS: "localhost"}),
        "routes[0].upstream: 'localhost' is not an address of the form HOST:PORT",
    ),
    "bad listen port": (
        gateway_toml(GOOD_ROUTES, extra='listen = "127.0.0.1:99999"'),
        "listen: '127.0.0.1:99999': the port must be a number from 0 to 65535",
    ),
    "service without descriptor": (
        gateway_toml({"shop.shoppers.v1.ShopService": "127.0.0.1:50051"}),
        "routes[0].service: no descriptor for 'shop.shoppers.v1.ShopService'",
    ),
    "scope names nothing routed": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE + 'scope = ["shop.users.v1.UserService/GetUser"]\n'),
        "rate_limit.rules[0].scope[0]: 'shop.users.v1.UserService/GetUser' is neither a routed service",
    ),
    "no routes": (
        gateway_toml({}),
        "routes: required field is missing",
    ),
    "service routed twice": (
        gateway_toml(GOOD_ROUTES) + f'\n[[routes]]\nservice = "{USERS}"\nupstream = "127.0.0.1:1"\n',
        "routes: service 'shop.users.v1.UserService' is routed twice",
    ),
    "not TOML": ("listen = \n", "not valid TOML"),
    "unknown storage": (
        gateway_toml(GOOD_ROUTES, rules='[rate_limit]\nstorage = "mongodb://x"\n' + PER_USER_RULE),
        "rate_limit.storage: 'mongodb://x' is not a storage URI this gateway knows; use one of memory://, redis://",
    ),
    "bad failure mode": (
        gateway_toml(GOOD_ROUTES, rules='[rate_limit]\non_storage_error = "maybe"\n' + PER_USER_RULE),
        "rate_limit.on_storage_error: Input should be 'allow', 'deny' or 'local'",
    ),
    "override for unknown client": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE + 'overrides = { gold = "10/30 seconds" }\n'),
        "rate_limit.rules[0].overrides: no API key has client name 'gold' (known: demo)",
    ),
    "missing descriptor set file": (
        gateway_toml(GOOD_ROUTES, extra='descriptor_sets = ["nowhere.binpb"]'),
        "descriptor_sets[0]: cannot read",
    ),
    "tracing endpoint not an address": (
        gateway_toml(GOOD_ROUTES) + '\n[tracing]\nendpoint = "collector"\n',
        "tracing: endpoint: 'collector' is not an address of the form HOST:PORT",
    ),
    "tracing http endpoint not a URL": (
        gateway_toml(GOOD_ROUTES) + '\n[tracing]\nendpoint = "127.0.0.1:4318"\nprotocol = "http/protobuf"\n',
        "endpoint: '127.0.0.1:4318' is not an http:// or https:// URL",
    ),
    "tracing sample ratio above 1": (
        gateway_toml(GOOD_ROUTES) + '\n[tracing]\nendpoint = "127.0.0.1:4317"\nsample_ratio = 2\n',
        "tracing.sample_ratio: Input should be less than or equal to 1",
    ),
    "upper-case metadata key": (
        gateway_toml(GOOD_ROUTES, rules=PER_USER_RULE.replace("field:user_id", "metadata:X-Tenant")),
        "metadata keys are lower case in gRPC: write 'metadata:x-tenant'",
    ),
}


def run_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_config_error_names_field_and_exits_2(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    config = write_config(tmp_path, text)
    result = run_gateway("--config", str(config), "--listen", "127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    [message] = result.stderr.splitlines()  # one line, no traceback, nothing listened
    assert message.startswith(f"grpc-gateway: error: config {config}: ")
    assert expected in message


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_gateway("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert (
        f"config {tmp_path / 'absent.toml'}: cannot read the file (No such file or directory)"
        in result.stderr
    )


def test_reference_config_is_valid() -> None:
    from gateway.config.schema import REFERENCE_CONFIG, load_config
    from gateway.policy.ratelimit.rules import RateLimitPolicy
    from gateway.routing.table import build_routes, load_catalog

    config = load_config(REFERENCE_CONFIG)
    routes = build_routes(config, load_catalog(config))
    assert set(routes.upstream_of) == {USERS, "shop.recommendations.v1.RecommendationService"}
    policy = RateLimitPolicy(config.rate_limit, routes, ["demo"])
    assert [rule.rule.name for rule in policy.rules_for(f"/{USERS}/GetUser")] == ["per-user"]
