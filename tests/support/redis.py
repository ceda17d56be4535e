"""Real redis-server processes on free loopback ports, started and stopped by the tests themselves:
one server, a Cluster of three masters (``redis-cli --cluster create``), or a master, a replica and
a sentinel; each, on request, protected by a password (``requirepass``; the sentinel's own apart) and
reached over TLS too (a TLS port beside the plaintext one, which the tests' own commands use)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.ratelimit.resp import Reply, ReplyParser, encode
from tests.support.processes import free_port
from tests.support.programs import required_program


def _binary(name: str = "redis-server") -> str:
    return required_program(name, "redis-server" if name == "redis-server" else "redis-tools")


def command(port: int, *arguments: bytes | str | int, password: str | None = None) -> Reply:
    """One command to 127.0.0.1:``port`` (after ``AUTH password``, if given), its reply (an error
    reply is returned, not raised)."""
    parser = ReplyParser()
    wanted = 1 if password is None else 2
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        login = encode("AUTH", password) if password is not None else b""
        connection.sendall(login + encode(*arguments))
        replies: list[Reply] = []
        while len(replies) < wanted:
            data = connection.recv(65536)
            if not data:
                raise ConnectionError(f"redis on port {port} closed the connection")
            replies += parser.feed(data)
        return replies[-1]


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {within} s")
        time.sleep(0.02)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
            connection.sendall(b"PING\r\n")
            # A server with a password answers too, that it wants one: it is up.
            return connection.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process; tests can kill, freeze and restart it on the same port."""

    def __init__(
        self,
        binary: str,
        port: int,
        options: tuple[str, ...] = (),
        sentinel: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"  # never with the password: tests give it as they test
        self.options = options
        self.sentinel = sentinel  # a sentinel's config file: run as a sentinel
        self.password = password  # requirepass (a sentinel's in its config file)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *arguments: bytes | str | int) -> Reply:
        """:func:`command` to this server, logged in with its password."""
        return command(self.port, *arguments, password=self.password)

    def start(self, timeout: float = 10.0) -> None:
        first = [str(self.sentinel), "--sentinel"] if self.sentinel is not None else []
        self.process = subprocess.Popen(
            [
                self.binary,
                *first,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *([] if self.sentinel is not None else ["--save", "", "--appendonly", "no"]),
                *(["--requirepass", self.password] if self.password and self.sentinel is None else []),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass(frozen=True)
class ServerTls:
    """What a redis-server needs to speak TLS: its certificate, the CA that signs every certificate
    here (clients must show one: ``tls-auth-clients``), and a client certificate for its own
    connections to the others (a Cluster's bus, a replica to its master, a sentinel to both)."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def options(self, tls_port: int) -> tuple[str, ...]:
        """redis-server's command line for TLS on ``tls_port`` (a sentinel's too)."""
        return (
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-client-cert-file", str(self.client_cert),
            "--tls-client-key-file", str(self.client_key),
            "--tls-auth-clients", "yes",
        )  # fmt: skip


def _stop(servers: list[RedisServer]) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.thaw()
        server.kill()


@contextmanager
def redis_server(
    password: str | None = None, options: tuple[str, ...] = (), started: bool = True
) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port for the duration of the block; with ``password``, its
    requirepass (the default user's); ``options``: more of its command line (``--user …``); not
    ``started``: the test starts it (its port is chosen)."""
    server = RedisServer(_binary(), free_port(), options, password=password)
    if started:
        server.start()
    try:
        yield server
    finally:
        _stop([server])


@dataclass
class RedisCluster:
    """Three masters, no replicas; a master that is killed keeps its slots until it is back."""

    masters: list[RedisServer]
    tls_ports: list[int]  # each master's, in order; empty: no TLS

    @property
    def url(self) -> str:
        """``redis+cluster://`` to the masters' ports, or ``rediss+cluster://`` to their TLS ports."""
        if self.tls_ports:
            return "rediss+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.tls_ports)
        return "redis+cluster://" + ",".join(f"127.0.0.1:{master.port}" for master in self.masters)

    def slots_of(self, master: RedisServer) -> list[tuple[int, int]]:
        """The slot ranges ``master`` serves, as the cluster maps them."""
        ranges = []
        for entry in self.masters[0].command("CLUSTER", "SLOTS"):  # type: ignore[union-attr]
            first, last, owner = entry[0], entry[1], entry[2]  # type: ignore[index]
            if owner[1] == master.port:  # type: ignore[index]
                ranges.append((first, last))
        return ranges  # type: ignore[return-value]

    def healthy(self) -> bool:
        """Every master up and every node says the cluster is ok."""
        return all(
            b"cluster_state:ok" in master.command("CLUSTER", "INFO")  # type: ignore[operator]
            for master in self.masters
        )


@contextmanager
def redis_cluster(
    folder: Path, password: str | None = None, tls: ServerTls | None = None
) -> Iterator[RedisCluster]:
    """A Cluster of three masters made with ``redis-cli --cluster create``, up until the block ends.

    A node that is down is noticed within a second (``cluster-node-timeout``), and the others keep
    serving their slots (``cluster-require-full-coverage no``). With ``password``: every node's
    requirepass and masterauth. With ``tls``: every node also on a TLS port, and the bus over TLS
    (``tls-cluster``); a client over TLS reads the TLS ports in the slot map.
    """
    binary = _binary()
    masters = []
    tls_ports = []
    for _ in range(3):
        port = free_port()
        tls_options: tuple[str, ...] = ()
        if tls is not None:
            tls_ports.append(free_port())
            tls_options = (*tls.options(tls_ports[-1]), "--tls-cluster", "yes")
        options = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / f"nodes-{port}.conf"),
            # The bus port of its own: PORT + 10000 (the default) may be past 65535.
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", "1000",
            "--cluster-require-full-coverage", "no",
            "--dir", str(folder),
            *(("--masterauth", password) if password else ()),
            *tls_options,
        )  # fmt: skip
        masters.append(RedisServer(binary, port, options, password=password))
    try:
        for master in masters:
            master.start()
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{master.port}" for master in masters),
                "--cluster-yes",
                *(("-a", password, "--no-auth-warning") if password else ()),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        cluster = RedisCluster(masters, tls_ports)
        wait_until(cluster.healthy, 15, "cluster_state:ok on every node")
        yield cluster
    finally:
        _stop(masters)


@dataclass
class RedisSentinel:
    """A master, its replica and one sentinel watching them as SERVICE."""

    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    sentinel_tls_port: int | None = None  # None: no TLS

    SERVICE = "gateway"

    @property
    def url(self) -> str:
        """``redis+sentinel://`` to the sentinel's port, or ``rediss+sentinel://`` to its TLS port."""
        if self.sentinel_tls_port is not None:
            return f"rediss+sentinel://127.0.0.1:{self.sentinel_tls_port}/{self.SERVICE}"
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.SERVICE}"

    def named_master(self) -> int:
        """The port the sentinel names as master now."""
        reply = self.sentinel.command("SENTINEL", "get-master-addr-by-name", self.SERVICE)
        assert isinstance(reply, list)
        return int(reply[1])  # type: ignore[arg-type]


@contextmanager
def redis_sentinel(
    folder: Path,
    password: str | None = None,
    sentinel_password: str | None = None,
    down_after: float = 0.5,
    tls: ServerTls | None = None,
) -> Iterator[RedisSentinel]:
    """A master, a replica of it and a sentinel that fails over once the master has not answered for
    ``down_after`` seconds (about a second after a death, by default).

    With ``password``: the master's and the replica's requirepass and masterauth (and the
    sentinel's auth-pass); with ``sentinel_password``: the sentinel's own requirepass. With ``tls``:
    each on a TLS port too, and the replica and the sentinel reach the master over TLS
    (``tls-replication``), so the sentinel names the master's TLS port.
    """
    binary = _binary()
    auth = ("--masterauth", password) if password else ()
    master_tls, replica_tls, sentinel_tls = (free_port(), free_port(), free_port()) if tls else (0, 0, 0)

    def over_tls(port: int) -> tuple[str, ...]:
        return () if tls is None else (*tls.options(port), "--tls-replication", "yes")

    master = RedisServer(binary, free_port(), (*auth, *over_tls(master_tls)), password=password)
    upstream = master_tls if tls else master.port
    replica = RedisServer(
        binary,
        free_port(),
        ("--replicaof", "127.0.0.1", str(upstream), *auth, *over_tls(replica_tls)),
        password=password,
    )
    config = folder / "sentinel.conf"
    config.write_text(
        f"sentinel monitor {RedisSentinel.SERVICE} 127.0.0.1 {upstream} 1\n"
        f"sentinel down-after-milliseconds {RedisSentinel.SERVICE} {round(down_after * 1000)}\n"
        f"sentinel failover-timeout {RedisSentinel.SERVICE} 2000\n"
        + (f"sentinel auth-pass {RedisSentinel.SERVICE} {password}\n" if password else "")
        + (f"requirepass {sentinel_password}\n" if sentinel_password else "")
    )
    sentinel = RedisServer(
        binary, free_port(), over_tls(sentinel_tls), sentinel=config, password=sentinel_password
    )
    servers = [master, replica, sentinel]
    try:
        for server in servers:
            server.start()
        in_sync = b"master_link_status:up"
        wait_until(lambda: in_sync in replica.command("INFO", "replication"), 10, "the replica in sync")  # type: ignore[operator]
        wait_until(
            lambda: bool(sentinel.command("SENTINEL", "replicas", RedisSentinel.SERVICE)),
            15,
            "the sentinel knowing the replica",
        )
        yield RedisSentinel(master, replica, sentinel, sentinel_tls if tls else None)
    finally:
        _stop(servers)
