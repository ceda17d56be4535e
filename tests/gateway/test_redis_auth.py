"""Redis with passwords, on real servers: a single Redis (requirepass, an ACL user), a Cluster whose
every node wants one (the slot map read with it), sentinels with their own; TLS with a client
certificate. Through pauses, kills and restarts, the limits are exact while Redis is up and no line
the gateway prints holds a password. And freshly started gateways are exact from their first call."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import io
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.check import check
from gateway.config.schema import ConfigError, RateLimit, parse_config
from gateway.policy.ratelimit.access import access
from gateway.policy.ratelimit.rules import RateLimitPolicy, open_storage
from gateway.routing.table import build_routes, load_catalog
from tests.gateway.certs import Authority, Pair, issue, make_authority
from tests.gateway.configs import USERS
from tests.gateway.conftest import Services
from tests.gateway.faults_support import busy_cpus, slot_of_user
from tests.gateway.ops_support import value
from tests.gateway.redis_auth_support import (
    PrintingGateway,
    auth_toml,
    counted,
    info,
    printing_gateway,
)
from tests.gateway.test_shared_limits import get_user, many_calls
from tests.support.processes import free_port
from tests.support.redis import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    ServerTls,
    redis_cluster,
    redis_sentinel,
    redis_server,
    wait_until,
)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# 20 calls for one user at 5/30 s: 5 pass, 15 are refused, nothing else.
EXACT: tuple[int, int, set[grpc.StatusCode]] = (5, 15, set())

# Distinct enough that a hit in a log line can only be a leak.
DATA_PASSWORD = "data-pw-5f1c9e7a"
SENTINEL_PASSWORD = "sentinel-pw-0b82d4"
ADMIN_PASSWORD = "admin-pw-93aa1e"  # the default user's, where the gateway logs in as another


def failures(gateway: PrintingGateway, kind: str) -> float:
    return value(gateway.scrape(), "grpc_gateway_rate_limit_store_failures_total", kind=kind)


async def limited_only_while_up(
    gateway: PrintingGateway,
    users: Iterator[int],
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    kill: Callable[[], None],
    restart: Callable[[], None],
) -> None:
    """Calls through each phase, with on_storage_error = "deny": exact while Redis is up; refused
    UNAVAILABLE (never let through) while it is paused or dead; exact again once it is back."""
    address = gateway.address
    assert await counted(address, next(users)) == EXACT, "up"
    freeze()
    try:
        paused = await asyncio.gather(*(get_user(address, next(users)) for _ in range(3)))
    finally:
        thaw()
    assert paused == [UNAVAILABLE] * 3, "paused"
    assert await counted(address, next(users)) == EXACT, "resumed"
    kill()
    assert [await get_user(address, next(users)) for _ in range(3)] == [UNAVAILABLE] * 3, "killed"
    await asyncio.to_thread(restart)
    deadline = time.monotonic() + 10
    while await get_user(address, next(users)) == UNAVAILABLE:
        assert time.monotonic() < deadline, "Redis not used again within 10 s of its restart"
        await asyncio.sleep(0.05)
    assert await counted(address, next(users)) == EXACT, "restarted"


def assert_never_printed(gateway: PrintingGateway, *secrets: str) -> str:
    """Stop the gateway; everything it printed, checked to hold none of ``secrets``."""
    assert gateway.stop() == 0
    printed = gateway.printed()
    assert "rate-limit store unavailable" in printed  # the failures were logged: lines that could leak
    for secret in secrets:
        assert secret not in printed
    return printed


# --- config -------------------------------------------------------------------------------------


def rate_limit(**fields: object) -> dict[str, object]:
    return {"routes": [{"service": "a.B", "upstream": "127.0.0.1:1"}], "rate_limit": fields}


@pytest.mark.engine_neutral
@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"storage": f"redis://:{DATA_PASSWORD}@h:1", "password_env": "PW"},
            "password_env and the password in storage ('redis://:***@h:1') are two passwords",
        ),
        (
            {"storage": "redis+sentinel://h:1/m", "sentinel_password": "x", "sentinel_password_env": "S"},
            "sentinel_password and sentinel_password_env: give one of them",
        ),
        (
            {"storage": "redis://h:1", "sentinel_password_env": "S"},
            "sentinel_password_env: only for a redis+sentinel://",
        ),
        ({"storage": "redis://h:1", "tls": {"ca": "ca.pem"}}, "tls: only for a TLS storage (rediss://, "),
        ({"storage": "redis+cluster://h:1", "tls": {"ca": "ca.pem"}}, "and storage is 'redis+cluster://h:1'"),
        (
            {"storage": "rediss+cluster://h:1", "sentinel_password_env": "S"},
            "sentinel_password_env: only for a redis+sentinel:// or rediss+sentinel:// storage",
        ),
        ({"storage": "memory://", "password_env": "PW"}, "password_env: only for a Redis storage"),
        ({"storage": "rediss://h:1", "tls": {"cert": "c.pem"}}, "give both cert and key"),
        ({"storage": f"redis//:{DATA_PASSWORD}@h:1"}, "'***@h:1' is not a storage URI this gateway knows"),
    ],
)
def test_settings_that_do_not_go_together_are_config_errors(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(rate_limit(**fields), "/etc/gateway.toml")
    assert words in str(caught.value)
    assert DATA_PASSWORD not in str(caught.value)


@pytest.mark.engine_neutral
@pytest.mark.parametrize(
    ("storage", "words"),
    [
        (
            "rediss+cluster://h:1,h:2/2",
            "'rediss+cluster://h:1,h:2/2': a Cluster has only database 0; remove '/2'",
        ),
        (
            "rediss+sentinel://h:1",
            "'rediss+sentinel://h:1': name the master after the sentinels, rediss+sentinel://H:P/SERVICE",
        ),
        (
            "rediss://h:1,h:2",
            "'rediss://h:1,h:2': one address for a single Redis (redis+cluster:// for several)",
        ),
    ],
)
def test_a_storage_uri_of_the_wrong_shape_is_a_config_error(storage: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_storage(RateLimit(storage=storage))
    assert str(caught.value) == f"rate_limit.storage: {words}"


@pytest.mark.engine_neutral
def test_a_missing_variable_is_a_config_error_naming_the_field_and_the_variable() -> None:
    config = RateLimit(storage="redis+sentinel://h:1/m", password_env="PW", sentinel_password_env="SPW")
    with pytest.raises(
        ConfigError, match=r"^rate_limit.password_env: the environment variable PW is not set$"
    ):
        access(config, {})
    with pytest.raises(
        ConfigError, match=r"^rate_limit.sentinel_password_env: the environment variable SPW is not set$"
    ):
        access(config, {"PW": DATA_PASSWORD})
    with pytest.raises(ConfigError, match=r"^rate_limit.password_env: the environment variable PW is empty$"):
        access(config, {"PW": ""})
    read = access(config, {"PW": DATA_PASSWORD, "SPW": SENTINEL_PASSWORD})
    assert (read.password, read.sentinel_password) == (DATA_PASSWORD, SENTINEL_PASSWORD)
    assert DATA_PASSWORD not in repr(read)
    assert SENTINEL_PASSWORD not in repr(read)


@pytest.mark.engine_neutral
def test_check_names_the_variable_and_never_shows_a_password(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_TEST_REDIS_PASSWORD", raising=False)
    config = auth_toml(
        services, tmp_path, "redis://gateway@127.0.0.1:1", 'password_env = "GATEWAY_TEST_REDIS_PASSWORD"'
    )
    out, err = io.StringIO(), io.StringIO()
    assert check(config, {}, out, err) == 2
    assert (
        "rate_limit.password_env: the environment variable GATEWAY_TEST_REDIS_PASSWORD is not set"
        in err.getvalue()
    )

    monkeypatch.setenv("GATEWAY_TEST_REDIS_PASSWORD", DATA_PASSWORD)
    out, err = io.StringIO(), io.StringIO()
    assert check(config, {}, out, err) == 0, err.getvalue()
    # A password with "/", "?" and "@" in the URI, not percent-encoded: never shown, in part either.
    tricky = "p/a?ss@w#rd-" + DATA_PASSWORD
    uri_config = auth_toml(services, tmp_path, f"redis://gateway:{tricky}@127.0.0.1:1/x", name="uri.toml")
    assert check(uri_config, {}, out, err) == 2
    printed = out.getvalue() + err.getvalue()
    assert "redis://gateway:***@127.0.0.1:1/x" in printed
    for part in (DATA_PASSWORD, "p/a", "rd-"):
        assert part not in printed


@pytest.mark.engine_neutral
def test_a_reload_keeps_the_store_unless_what_reaches_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "routes": [{"service": USERS, "upstream": "127.0.0.1:1"}],
        "rate_limit": {"storage": "redis://127.0.0.1:1", "password_env": "GATEWAY_TEST_REDIS_PASSWORD"},
    }
    config = parse_config(data, "/etc/gateway/gateway.toml")
    routes = build_routes(config, load_catalog(config))
    monkeypatch.setenv("GATEWAY_TEST_REDIS_PASSWORD", DATA_PASSWORD)
    store = RateLimitPolicy(config.rate_limit, routes, None).store
    assert RateLimitPolicy(config.rate_limit, routes, None, store).store is store
    monkeypatch.setenv("GATEWAY_TEST_REDIS_PASSWORD", "rotated-" + DATA_PASSWORD)
    rotated = RateLimitPolicy(config.rate_limit, routes, None, store).store
    assert rotated is not store
    assert rotated.remote is not None
    assert rotated.remote.access.password == "rotated-" + DATA_PASSWORD


# --- a single Redis -----------------------------------------------------------------------------


async def test_an_acl_user_through_pauses_kills_and_restarts_never_printed(
    services: Services, tmp_path: Path
) -> None:
    """The ACL user and its password in the storage URI; the default user has another password."""
    user = ("--user", "gateway", "on", f">{DATA_PASSWORD}", "~*", "+@all")
    with redis_server(password=ADMIN_PASSWORD, options=user) as redis:
        storage = f"redis://gateway:{DATA_PASSWORD}@127.0.0.1:{redis.port}"
        config = auth_toml(services, tmp_path, storage, timeout=0.25)
        with printing_gateway(config, tmp_path, "single") as gateway:
            await limited_only_while_up(
                gateway, iter(range(100, 200)), redis.freeze, redis.thaw, redis.kill, redis.start
            )
            assert failures(gateway, "noauth") == failures(gateway, "wrongpass") == 0
            printed = assert_never_printed(gateway, DATA_PASSWORD, ADMIN_PASSWORD)
    assert f"redis://gateway:***@127.0.0.1:{redis.port}" in printed  # the outage's end names the store


async def test_a_refused_login_is_said_in_words(services: Services, tmp_path: Path) -> None:
    wrong = "wrong-pw-77d0c2"
    # An ACL user that may load the script but not run it.
    limited = ("--user", "limited", "on", f">{DATA_PASSWORD}", "~*", "+@all", "-evalsha")
    with redis_server(password=DATA_PASSWORD, options=limited) as redis:
        no_password = auth_toml(services, tmp_path, redis.url, name="none.toml")
        wrong_password = auth_toml(services, tmp_path, redis.url, 'password_env = "PW"', name="wrong.toml")
        storage = f"redis://limited@127.0.0.1:{redis.port}"
        unpermitted = auth_toml(services, tmp_path, storage, 'password_env = "PW"', name="limited.toml")
        with (
            printing_gateway(no_password, tmp_path, "none") as without,
            printing_gateway(wrong_password, tmp_path, "wrong", env={"PW": wrong}) as mistaken,
            printing_gateway(unpermitted, tmp_path, "limited", env={"PW": DATA_PASSWORD}) as forbidden,
        ):
            for gateway in (without, mistaken, forbidden):
                assert await get_user(gateway.address, 1) == UNAVAILABLE
            assert failures(without, "noauth") == 1
            assert failures(mistaken, "wrongpass") == 1
            assert failures(forbidden, "noperm") == 1
            first = assert_never_printed(without, DATA_PASSWORD)
            second = assert_never_printed(mistaken, DATA_PASSWORD, wrong)
            third = assert_never_printed(forbidden, DATA_PASSWORD)
    assert (
        "Redis asks for a password and none is configured "
        "(the storage URI's password or rate_limit.password_env)" in first
    )
    assert "Redis refused the password for user 'default'" in second
    assert "Redis user 'limited' lacks a permission the gateway needs: NOPERM" in third


async def test_fresh_gateways_are_exact_from_their_first_call(services: Services, tmp_path: Path) -> None:
    """Two gateways just started (SERVING), both cores busy, 100 calls at once for one user at 5/30 s
    with the default 50 ms storage timeout: exactly 5 pass, and no decision timed out; 10 times,
    with new gateways each time (the same Redis, budgets for a new user each run)."""
    with redis_server(password=DATA_PASSWORD) as redis:
        fields = 'password_env = "PW"'
        first = auth_toml(services, tmp_path, redis.url, fields, on_error="allow", name="a.toml")
        second = auth_toml(services, tmp_path, redis.url, fields, on_error="allow", name="b.toml")
        env = {"PW": DATA_PASSWORD}
        for run in range(10):
            with contextlib.ExitStack() as stack:
                a, b = await asyncio.gather(
                    asyncio.to_thread(
                        stack.enter_context, printing_gateway(first, tmp_path, f"a{run}", env, "INFO")
                    ),
                    asyncio.to_thread(
                        stack.enter_context, printing_gateway(second, tmp_path, f"b{run}", env, "INFO")
                    ),
                )
                with busy_cpus(seconds=10):
                    halves = await asyncio.gather(
                        many_calls(a.address, 9000 + run, 50), many_calls(b.address, 9000 + run, 50)
                    )
                codes = halves[0] + halves[1]
                passed = sum(code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND) for code in codes)
                timed_out = [failures(gateway, "timeout") for gateway in (a, b)]
                assert (passed, timed_out) == (5, [0, 0]), run
                for gateway in (a, b):  # nothing more to read from them: no graceful stop to wait for
                    gateway.process.kill()


def _no_gateway_clients(server: RedisServer) -> bool:
    """Whether ``server`` has no connection but the one asking."""
    listed = server.command("CLIENT", "LIST")
    assert isinstance(listed, bytes)
    return len(listed.splitlines()) == 1


async def _reload(gateway: PrintingGateway) -> None:
    """SIGHUP, and wait until the gateway says it reloaded."""
    reloaded = gateway.printed().count('"config reloaded"')
    gateway.process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: gateway.printed().count('"config reloaded"') > reloaded, 10, "the reload"
    )


async def test_a_reload_onto_another_redis_is_exact_at_once_and_lets_the_old_go(
    services: Services, tmp_path: Path
) -> None:
    """A reload that moves the budgets to another Redis connects to it before it takes calls, as a
    start does: the first burst after it, both cores busy, with the default 50 ms storage timeout, is
    exact and no decision times out. The old Redis's connections are closed once the old plan's calls
    have had time to end (shutdown_grace + 1 s)."""
    with redis_server(password=DATA_PASSWORD) as first, redis_server(password=DATA_PASSWORD) as second:

        def config_for(redis: RedisServer) -> Path:
            path = auth_toml(services, tmp_path, redis.url, 'password_env = "PW"', on_error="allow")
            path.write_text("shutdown_grace = 0.5\n" + path.read_text())
            return path

        with printing_gateway(
            config_for(first), tmp_path, "moving", {"PW": DATA_PASSWORD}, "INFO"
        ) as gateway:
            assert await counted(gateway.address, 830) == EXACT
            assert not _no_gateway_clients(first)
            for run, (now, before) in enumerate([(second, first), (first, second)]):
                config_for(now)
                await _reload(gateway)
                with busy_cpus(seconds=10):
                    passed, refused, other = await counted(gateway.address, 840 + run, 100)
                assert (passed, refused, other, failures(gateway, "timeout")) == (5, 95, set(), 0), run
                closed = functools.partial(_no_gateway_clients, before)
                await asyncio.to_thread(wait_until, closed, 5, "the old store's connections closed")
        assert "Traceback" not in gateway.printed()


async def test_a_gateway_started_before_its_redis_serves_once_redis_is_ready(
    services: Services, tmp_path: Path
) -> None:
    """Redis listening only after the gateway's first attempt failed (a server starting beside it):
    the gateway says SERVING once it is connected, and its first burst is exact."""
    with redis_server(password=DATA_PASSWORD, started=False) as redis, contextlib.ExitStack() as stack:
        config = auth_toml(services, tmp_path, redis.url, 'password_env = "PW"', on_error="allow")
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                stack.enter_context, printing_gateway(config, tmp_path, "early", {"PW": DATA_PASSWORD})
            )
        )
        err = tmp_path / "early.stderr"
        await asyncio.to_thread(
            wait_until, lambda: "cannot connect to redis" in err.read_text(), 10, "a failed first attempt"
        )
        assert not starting.done()  # not SERVING while its store is not ready
        await asyncio.to_thread(redis.start)
        gateway = await starting
        assert await counted(gateway.address, 850, 100) == (5, 95, set())
        assert failures(gateway, "timeout") == failures(gateway, "connection") == 0
        assert "not ready at start-up" not in gateway.printed()


# --- a Cluster ----------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    folder = tmp_path / "cluster"
    folder.mkdir()
    with redis_cluster(folder, password=DATA_PASSWORD) as started:
        yield started


def _errors(master: RedisServer) -> dict[str, str]:
    """The error replies ``master`` gave since its stats were reset, by kind (``errorstat_MOVED``…)."""
    return {
        name: count for name, count in info(master, "errorstats").items() if name.startswith("errorstat_")
    }


def _calls(master: RedisServer, command: str) -> int:
    """How many times ``master`` ran ``command`` since its stats were reset."""
    stats = info(master, "commandstats").get(f"cmdstat_{command}", "calls=0")
    return int(stats.split(",")[0].removeprefix("calls="))


async def test_a_cluster_with_passwords_reads_its_slot_map_and_is_exact(
    services: Services, cluster: RedisCluster, tmp_path: Path
) -> None:
    for master in cluster.masters:
        master.command("CONFIG", "RESETSTAT")
    config = auth_toml(services, tmp_path, cluster.url, 'password_env = "PW"', timeout=0.25)
    with printing_gateway(config, tmp_path, "cluster", env={"PW": DATA_PASSWORD}) as gateway:
        # Users whose budgets land on every master; each answered where it lives.
        for user in range(300, 310):
            assert await counted(gateway.address, user) == EXACT, user
        # The slot map was read (with AUTH) and followed: no command needed a redirect.
        assert all(_errors(master) == {} for master in cluster.masters), [
            _errors(master) for master in cluster.masters
        ]
        assert sum(_calls(master, "cluster|slots") for master in cluster.masters) >= 1

        def freeze() -> None:
            for master in cluster.masters:
                master.freeze()

        def thaw() -> None:
            for master in cluster.masters:
                master.thaw()

        def kill() -> None:
            for master in cluster.masters:
                master.kill()

        def restart() -> None:
            for master in cluster.masters:
                master.start()
            wait_until(cluster.healthy, 15, "cluster_state:ok on every node")

        await limited_only_while_up(gateway, iter(range(400, 500)), freeze, thaw, kill, restart)
        assert failures(gateway, "noauth") == failures(gateway, "moved") == 0
        assert_never_printed(gateway, DATA_PASSWORD)


# --- Sentinel -----------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    folder = tmp_path / "sentinel"
    folder.mkdir()
    # No failover in this test: a master killed is restarted well before the sentinel gives it up.
    with redis_sentinel(folder, DATA_PASSWORD, SENTINEL_PASSWORD, down_after=10) as started:
        yield started


async def test_sentinels_with_their_own_password(
    services: Services, sentinel: RedisSentinel, tmp_path: Path
) -> None:
    fields = 'password_env = "PW"\nsentinel_password_env = "SPW"'
    config = auth_toml(services, tmp_path, sentinel.url, fields, timeout=0.25)
    env = {"PW": DATA_PASSWORD, "SPW": SENTINEL_PASSWORD}
    wrong = auth_toml(
        services,
        tmp_path,
        sentinel.url,
        'password_env = "PW"\nsentinel_password = "nope-3c1d"',
        name="wrong.toml",
    )
    with printing_gateway(config, tmp_path, "sentinel", env=env) as gateway:
        master = sentinel.master
        await limited_only_while_up(
            gateway, iter(range(600, 700)), master.freeze, master.thaw, master.kill, master.start
        )
        assert sentinel.named_master() == master.port  # the same master throughout: no failover
        assert_never_printed(gateway, DATA_PASSWORD, SENTINEL_PASSWORD)
    with printing_gateway(wrong, tmp_path, "wrong-sentinel", env=env) as mistaken:
        assert await get_user(mistaken.address, 1) == UNAVAILABLE
        printed = assert_never_printed(mistaken, DATA_PASSWORD, SENTINEL_PASSWORD, "nope-3c1d")
    assert (
        f"the sentinel at 127.0.0.1:{sentinel.sentinel.port} refused the password for user 'default'"
        in printed
    )
    assert "does not know master" not in printed


# --- TLS ----------------------------------------------------------------------------------------


def _server_certificate(authority: Authority, folder: Path, name: str) -> Pair:
    """A server certificate for ``name`` only (not the address dialled): server_name must be set."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


async def test_rediss_with_a_client_certificate_and_a_server_name(services: Services, tmp_path: Path) -> None:
    authority = make_authority(tmp_path, "redis-ca")
    server = _server_certificate(authority, tmp_path, "redis.internal")
    client = issue(authority, tmp_path, "gateway-client", server=False)
    tls_port = free_port()
    options = (
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(server.cert),
        "--tls-key-file", str(server.key),
        "--tls-ca-cert-file", str(authority.cert),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    tls = f"""password_env = "PW"

[rate_limit.tls]
ca = "{authority.cert}"
cert = "{client.cert}"
key = "{client.key}"
server_name = "redis.internal"
"""
    storage = f"rediss://127.0.0.1:{tls_port}"
    with redis_server(password=DATA_PASSWORD, options=options):
        config = auth_toml(services, tmp_path, storage, tls, timeout=0.25)
        # Without server_name, the certificate (for redis.internal only) does not match 127.0.0.1.
        unnamed = auth_toml(
            services,
            tmp_path,
            storage,
            tls.replace('server_name = "redis.internal"', ""),
            name="unnamed.toml",
        )
        env = {"PW": DATA_PASSWORD}
        with (
            printing_gateway(config, tmp_path, "tls", env=env) as gateway,
            printing_gateway(unnamed, tmp_path, "unnamed", env=env) as mismatched,
        ):
            assert await counted(gateway.address, 800) == EXACT
            assert await get_user(mismatched.address, 801) == UNAVAILABLE
            printed = assert_never_printed(mismatched, DATA_PASSWORD)
    assert "CERTIFICATE_VERIFY_FAILED" in printed


def _tls_everywhere(folder: Path) -> tuple[ServerTls, str]:
    """The servers' TLS files (a certificate for 127.0.0.1, where each is dialled, and a client
    certificate for their own connections) and the gateway's [rate_limit.tls], with a client
    certificate of its own, the servers wanting one."""
    authority = make_authority(folder, "redis-ca")
    server = issue(authority, folder, "redis", server=True)
    node = issue(authority, folder, "redis-node", server=False)
    client = issue(authority, folder, "gateway-client", server=False)
    fields = f"""
[rate_limit.tls]
ca = "{authority.cert}"
cert = "{client.cert}"
key = "{client.key}"
"""
    return ServerTls(authority.cert, server.cert, server.key, node.cert, node.key), fields


# How the store reaches Redis: no engine takes part in it.
@pytest.mark.engine_neutral
async def test_rediss_cluster_reaches_every_master_over_tls(services: Services, tmp_path: Path) -> None:
    """The seeds, and every master the slot map names, are dialled over TLS at the TLS ports the map
    gives, each certificate checked against the address dialled."""
    tls, fields = _tls_everywhere(tmp_path)
    folder = tmp_path / "cluster"
    folder.mkdir()
    with redis_cluster(folder, tls=tls) as started:
        assert started.url.startswith("rediss+cluster://")
        for master in started.masters:
            master.command("CONFIG", "RESETSTAT")
        config = auth_toml(services, tmp_path, started.url, fields, timeout=0.25)
        with printing_gateway(config, tmp_path, "tls-cluster") as gateway:
            for master in started.masters:  # a user whose budget this master holds
                ranges = started.slots_of(master)
                user = next(u for u in range(300, 400) if any(a <= slot_of_user(u) <= b for a, b in ranges))
                assert await counted(gateway.address, user) == EXACT, user
                assert _calls(master, "evalsha") > 0, master.port
            # Each was reached at once: none had to redirect a command.
            assert all(_errors(master) == {} for master in started.masters)
            assert "CERTIFICATE_VERIFY_FAILED" not in gateway.printed()


# How the store reaches Redis: no engine takes part in it.
@pytest.mark.engine_neutral
async def test_rediss_sentinel_asks_the_sentinels_and_the_master_over_tls(
    services: Services, tmp_path: Path
) -> None:
    tls, fields = _tls_everywhere(tmp_path)
    folder = tmp_path / "sentinel"
    folder.mkdir()
    with redis_sentinel(folder, tls=tls) as started:
        assert started.url.startswith("rediss+sentinel://")
        started.master.command("CONFIG", "RESETSTAT")
        config = auth_toml(services, tmp_path, started.url, fields, timeout=0.25)
        with printing_gateway(config, tmp_path, "tls-sentinel") as gateway:
            assert await counted(gateway.address, 820) == EXACT
            assert _calls(started.master, "evalsha") > 0
        # Without TLS the same sentinel port answers nothing the gateway can use: it was TLS all along.
        plain = auth_toml(services, tmp_path, started.url.replace("rediss+", "redis+"), name="plain.toml")
        with printing_gateway(plain, tmp_path, "plain-sentinel") as gateway:
            assert await get_user(gateway.address, 821) == UNAVAILABLE
