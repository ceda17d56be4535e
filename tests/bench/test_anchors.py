"""The anchors' configs, Envoy's and nginx's, as the bench writes them (no proxy is started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import anchors


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_envoy_listens_and_forwards_over_http2() -> None:
    config = anchors.envoy_config("127.0.0.1:8443", "127.0.0.1:50151")
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}
    manager = _manager(config)
    assert manager["codec_type"] == "HTTP2"
    cluster = config["static_resources"]["clusters"][0]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 50151}}
    # No access log, no admin listener.
    assert "access_log" not in manager
    assert "admin" not in config


def test_envoy_routes_only_calls_with_the_key_and_refuses_the_rest() -> None:
    routes = _manager(anchors.envoy_config("127.0.0.1:1", "127.0.0.1:2"))["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    routed, refused = routes
    assert routed["match"]["prefix"] == "/shop.users.v1.UserService/"
    assert routed["match"]["grpc"] == {}
    assert routed["match"]["headers"] == [{"name": "x-api-key", "string_match": {"exact": "secret-key"}}]
    assert routed["route"]["cluster"] == "users"
    assert refused["match"] == {"prefix": "/"}
    assert "route" not in refused
    added = {item["header"]["key"]: item["header"]["value"] for item in refused["response_headers_to_add"]}
    # UNAUTHENTICATED, in a reply of headers alone as a gRPC client reads it.
    assert added["grpc-status"] == "16"
    assert added["content-type"] == "application/grpc"


def test_envoy_rate_limits_every_call_with_a_bucket_that_never_empties() -> None:
    filters = _manager(anchors.envoy_config("127.0.0.1:1", "127.0.0.1:2"))["http_filters"]
    assert [item["name"] for item in filters] == [
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    limiter = filters[0]["typed_config"]
    assert limiter["token_bucket"]["max_tokens"] >= 1_000_000
    assert limiter["token_bucket"]["tokens_per_fill"] == limiter["token_bucket"]["max_tokens"]
    assert limiter["token_bucket"]["fill_interval"] == "1s"
    for switch in ("filter_enabled", "filter_enforced"):
        assert limiter[switch]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    # Its x-ratelimit-* headers are how the bench's check sees that it ran.
    assert limiter["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"


def test_envoy_runs_one_worker() -> None:
    command = anchors.envoy_command(Path("/opt/envoy"), Path("/tmp/envoy.json"))
    assert command[:3] == ["/opt/envoy", "-c", "/tmp/envoy.json"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert "--disable-hot-restart" in command


def test_envoy_version_is_the_release_first() -> None:
    line = "/opt/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"
    assert anchors.parse_envoy_version(line) == "1.40.0 (9e55809, Clean, RELEASE, BoringSSL)"
    assert anchors.parse_envoy_version("something else") == "something else"


def test_nginx_config() -> None:
    prefix = Path("/tmp/bench-x/nginx")
    text = anchors.nginx_config("127.0.0.1:8080", "127.0.0.1:50151", prefix, "root")
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        "user root;",
        "daemon off;",
        "worker_processes 1;",
        "pid /tmp/bench-x/nginx/nginx.pid;",
        "access_log off;",
        "listen 127.0.0.1:8080 http2;",
        "server 127.0.0.1:50151;",
        'if ($http_x_api_key != "secret-key") { return 401; }',
        "grpc_pass grpc://users;",
        "client_body_temp_path /tmp/bench-x/nginx/client_body_temp;",
    ):
        assert expected in lines
    # A bucket that never empties: a rate out of reach and room for every call of one millisecond.
    assert f"rate={anchors.NEVER_TRIPS_PER_SECOND}r/s;" in text
    assert f"limit_req zone=bench burst={anchors.NGINX_BURST} nodelay;" in lines
    # The key check comes before the limiter and the pass, in the service's location.
    location = text.index("location /shop.users.v1.UserService/ {")
    assert (
        location < text.index("if ($http_x_api_key") < text.index("limit_req zone") < text.index("grpc_pass")
    )
    # Connections are reused both ways beyond nginx's default of 1000 calls.
    assert lines.count(f"keepalive_requests {anchors.NGINX_KEEPALIVE_REQUESTS};") == 2
    assert text.count("{") == text.count("}")


def test_nginx_config_without_root_names_no_user() -> None:
    text = anchors.nginx_config("127.0.0.1:8080", "127.0.0.1:50151", Path("/tmp/n"), None)
    assert "user " not in text


def test_nginx_command_uses_its_own_prefix_and_logs_to_stderr() -> None:
    command = anchors.nginx_command(Path("/usr/sbin/nginx"), Path("/tmp/n"), Path("/tmp/n/nginx.conf"))
    assert command == ["/usr/sbin/nginx", "-p", "/tmp/n/", "-c", "/tmp/n/nginx.conf", "-e", "stderr"]
