"""Behind a load balancer: the client a trusted proxy names is what peer-keyed budgets, the failed-auth
lockout and the access log see; from anyone else the forwarding headers are ignored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from shop.users.v1 import users_pb2, users_pb2_grpc

from gateway.call import forwarded
from gateway.call.forwarded import TrustedProxies
from gateway.call.metadata import forwarded as forwarded_metadata
from gateway.call.peers import peer_address
from gateway.call.step import Call
from gateway.config.schema import ConfigError, parse_config
from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.support.processes import free_port, running, stderr_text

KEY = {"x-api-key": "secret-key"}
PEER_RULE = """
[[rate_limit.rules]]
name = "per-peer"
rate = "1/minute"
key = "peer"

[auth]
max_failures = 2
"""

TRUSTED = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"])


# Who the client is: the rules, without a gateway.


@pytest.mark.parametrize(
    ("peer", "metadata", "client"),
    [
        # The right-most address that is not a trusted proxy; ports dropped.
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "203.0.113.7")], "ipv4:203.0.113.7"),
        (
            "ipv4:127.0.0.1:5555",
            [("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3")],
            "ipv4:203.0.113.7",
        ),
        (
            "ipv4:127.0.0.1:5555",
            [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.2")],
            "ipv4:198.51.100.1",
        ),
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "203.0.113.7:4711")], "ipv4:203.0.113.7"),
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "[2001:db8::1]:4711, ")], "ipv6:[2001:db8::1]"),
        # Every hop trusted: the farthest one known.
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "10.0.0.9, 10.0.0.8")], "ipv4:10.0.0.9"),
        # A hop that is not an address: the proxy's own.
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "203.0.113.7, unknown")], "ipv4:127.0.0.1:5555"),
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for", "")], "ipv4:127.0.0.1:5555"),
        # Forwarded (RFC 7239): for= of each element, quoted IPv6 with a port, any case.
        (
            "ipv4:127.0.0.1:5555",
            [("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
            "ipv4:192.0.2.60",
        ),
        (
            "ipv4:127.0.0.1:5555",
            [("forwarded", 'For="[2001:db8:cafe::17]:4711", for=10.0.0.1')],
            "ipv6:[2001:db8:cafe::17]",
        ),
        ("ipv4:127.0.0.1:5555", [("forwarded", "for=_hidden")], "ipv4:127.0.0.1:5555"),
        ("ipv4:127.0.0.1:5555", [("forwarded", "proto=https")], "ipv4:127.0.0.1:5555"),
        # X-Forwarded-For wins over Forwarded.
        (
            "ipv4:127.0.0.1:5555",
            [("forwarded", "for=192.0.2.60"), ("x-forwarded-for", "203.0.113.7")],
            "ipv4:203.0.113.7",
        ),
        # grpc's IPv6 peers (brackets percent-encoded), and IPv4 on a dual-stack listener.
        ("ipv6:%5B2001:db8:ffff::5%5D:5555", [("x-forwarded-for", "203.0.113.7")], "ipv4:203.0.113.7"),
        ("ipv6:[::ffff:10.0.0.3]:5555", [("x-forwarded-for", "203.0.113.7")], "ipv4:203.0.113.7"),
        # From a peer that is not trusted, the headers are ignored.
        ("ipv4:192.0.2.1:5555", [("x-forwarded-for", "203.0.113.7")], "ipv4:192.0.2.1:5555"),
        ("ipv6:[2001:db8:1::5]:5555", [("forwarded", "for=203.0.113.7")], "ipv6:[2001:db8:1::5]:5555"),
        ("unix:/run/gateway.sock", [("x-forwarded-for", "203.0.113.7")], "unix:/run/gateway.sock"),
        # No header: the peer.
        ("ipv4:127.0.0.1:5555", [("x-api-key", "k")], "ipv4:127.0.0.1:5555"),
        ("ipv4:127.0.0.1:5555", [("x-forwarded-for-bin", b"\x01")], "ipv4:127.0.0.1:5555"),
    ],
)
def test_the_client_a_trusted_proxy_names(
    peer: str, metadata: list[tuple[str, str | bytes]], client: str
) -> None:
    assert TRUSTED.client(peer, metadata) == client


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:203.0.113.7", "203.0.113.7"), ("ipv6:[2001:db8:cafe::17]", "2001:db8:cafe::/64")],
)
def test_a_named_client_is_counted_by_its_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


@pytest.fixture
def trusting_loopback() -> Iterator[None]:
    forwarded.trust(["127.0.0.1/32"])
    try:
        yield
    finally:
        forwarded.trust([])


def test_a_call_asks_once_and_still_forwards_the_header(trusting_loopback: None) -> None:
    asked: list[int] = []

    def peer() -> str:
        asked.append(1)
        return "ipv4:127.0.0.1:5555"

    metadata = (("x-forwarded-for", "203.0.113.7"),)
    call = Call("grpc", "/shop.users.v1.UserService/GetUser", metadata, peer, "r")
    assert call.peer() == call.peer() == "ipv4:203.0.113.7"
    assert len(asked) == 1
    assert ("x-forwarded-for", "203.0.113.7") in forwarded_metadata(call)


def test_without_trusted_proxies_a_call_is_its_peer() -> None:
    call = Call("grpc", "/p.S/M", (("x-forwarded-for", "203.0.113.7"),), lambda: "ipv4:127.0.0.1:1", "r")
    assert call.peer() == "ipv4:127.0.0.1:1"


def test_trusted_proxies_must_be_networks() -> None:
    data = {"routes": [{"service": USERS, "upstream": "127.0.0.1:1"}], "trusted_proxies": ["10.0.0.1/8"]}
    with pytest.raises(ConfigError, match=r"trusted_proxies\[0\]: 10\.0\.0\.1/8 has host bits set"):
        parse_config(data, "gateway.toml")
    data["trusted_proxies"] = ["10.0.0.0/8", "2001:db8::1", "192.0.2.7"]
    assert parse_config(data, "gateway.toml").trusted_proxies == (
        "10.0.0.0/8",
        "2001:db8::1/128",
        "192.0.2.7/32",
    )


# Through a real gateway: budgets, the lockout and the access log, on both doors.


@contextlib.contextmanager
def gateway_trusting(
    services: Services, tmp_path: Path, networks: list[str]
) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    extra = f"trusted_proxies = {json.dumps(networks)}"
    config = write_config(tmp_path, gateway_toml(services.routes, rules=PEER_RULE, extra=extra))
    port, http_port = free_port(), free_port()
    args = ["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running([*args, "--http-listen", f"127.0.0.1:{http_port}"], port) as process:
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", process


async def grpc_code(address: str, headers: dict[str, str]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=101), metadata=tuple(headers.items()), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def access_peers(process: subprocess.Popen[str], count: int) -> list[str]:
    """The peers of the access log's lines, once it has ``count`` (lines are written in batches)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            json.loads(line) for line in stderr_text(process).splitlines() if '"logger":"access"' in line
        ]
        calls = [line for line in lines if line["method"] == "/shop.users.v1.UserService/GetUser"]
        if len(calls) >= count or time.monotonic() > deadline:
            return [line["peer"] for line in calls]
        await asyncio.sleep(0.05)


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(
    services: Services, tmp_path: Path
) -> None:
    with gateway_trusting(services, tmp_path, ["127.0.0.1/32", "10.0.0.0/8"]) as (address, http, process):
        async with httpx.AsyncClient(base_url=http, timeout=5) as web:

            async def status(**headers: str) -> int:
                sent = {name.replace("_", "-"): value for name, value in headers.items()}
                return (await web.get("/v1/users/101", headers={**KEY, **sent})).status_code

            # 203.0.113.7 through two proxies: its budget of one is spent, on either door.
            assert await status(x_forwarded_for="198.51.100.1, 203.0.113.7, 10.1.2.3") == 200
            assert await status(x_forwarded_for="203.0.113.7") == 429
            assert (
                await grpc_code(address, {**KEY, "x-forwarded-for": "203.0.113.7"})
                == grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            # Another client behind the same proxy has a budget of its own, on either door.
            assert await status(x_forwarded_for="203.0.113.8") == 200
            assert await grpc_code(address, {**KEY, "x-forwarded-for": "203.0.113.9"}) == grpc.StatusCode.OK
            # Forwarded: for=, an IPv6 client counted by its /64.
            assert await status(forwarded='for="[2001:db8:cafe::17]:4711";proto=http') == 200
            assert await status(forwarded='for="[2001:db8:cafe::99]"') == 429
            # The proxy's own calls: its address.
            assert await status() == 200
            assert await status() == 429

            # The lockout counts the forwarded client too.
            wrong = {"x-api-key": "not-the-key"}
            for _ in range(2):
                refused = await web.get(
                    "/v1/users/101", headers={**wrong, "x-forwarded-for": "198.51.100.20"}
                )
                assert refused.json()["message"] == "invalid API key"
            locked = await web.get("/v1/users/101", headers={**KEY, "x-forwarded-for": "198.51.100.20"})
            assert locked.status_code == 401
            assert locked.json()["message"].startswith("too many invalid API keys from this address")
            assert await status(x_forwarded_for="198.51.100.21") == 200

        peers = await access_peers(process, 13)
        assert peers[:7] == [
            "ipv4:203.0.113.7",
            "ipv4:203.0.113.7",
            "ipv4:203.0.113.7",
            "ipv4:203.0.113.8",
            "ipv4:203.0.113.9",
            "ipv6:[2001:db8:cafe::17]",
            "ipv6:[2001:db8:cafe::99]",
        ]
        assert all(peer.startswith("ipv4:127.0.0.1:") for peer in peers[7:9]), peers
        assert peers[9:] == ["ipv4:198.51.100.20"] * 3 + ["ipv4:198.51.100.21"]


async def test_from_an_untrusted_peer_the_headers_are_ignored(services: Services, tmp_path: Path) -> None:
    with gateway_trusting(services, tmp_path, ["10.0.0.0/8"]) as (address, http, process):
        async with httpx.AsyncClient(base_url=http, timeout=5) as web:
            first = await web.get("/v1/users/101", headers={**KEY, "x-forwarded-for": "203.0.113.7"})
            assert first.status_code == 200
            # Another forwarded address changes nothing: the budget is the connection's.
            second = await web.get("/v1/users/101", headers={**KEY, "x-forwarded-for": "203.0.113.8"})
            assert second.status_code == 429
            third = await web.get("/v1/users/101", headers={**KEY, "forwarded": "for=203.0.113.9"})
            assert third.status_code == 429
        code = await grpc_code(address, {**KEY, "x-forwarded-for": "203.0.113.10"})
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        peers = await access_peers(process, 4)
        assert len(peers) == 4
        assert all(peer.startswith("ipv4:127.0.0.1:") for peer in peers), peers
