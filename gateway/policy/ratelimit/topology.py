"""Which Redis server holds a budget: one server, the master Sentinel names, or a Cluster's node.

Each topology keeps a :class:`Link` per server it uses. ``start`` makes the first attempts (the
gateway's warm-up waits for them); nothing here runs per decision but ``link_for``.

- ``redis://`` / ``rediss://``: one server, at the URI's address.
- ``redis+sentinel://H:P[,H:P…]/SERVICE``: the master that the sentinels name for SERVICE, asked
  again at every reconnect, and proven a master (``ROLE``) before a decision is sent to it, so
  after a failover the link finds the promoted replica by itself.
- ``redis+cluster://H:P[,H:P…]``: a link per master, chosen by the key's hash slot from the map
  ``CLUSTER SLOTS`` gives; the map is read again when a node is lost or redirects a command.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.policy.ratelimit.connection import Address, Link, ask_once, expect_ok
from gateway.policy.ratelimit.resp import Reply, ReplyError, encode
from gateway.policy.ratelimit.script import SCRIPT

log = logging.getLogger("gateway.ratelimit")

SLOTS = 16384

# Seconds between reads of a Cluster's slot map while every master answers, and while one does not.
MAP_REFRESH_QUIET, MAP_REFRESH_TROUBLED = 10.0, 0.5


class StorageURIError(ValueError):
    """A storage URI this gateway cannot use; the message says why."""


@dataclass(frozen=True)
class RedisURI:
    scheme: str
    addresses: tuple[Address, ...]
    username: str | None
    password: str | None
    database: int
    service: str  # Sentinel's master name; "" otherwise

    @property
    def tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context() if self.scheme == "rediss" else None


def parse_uri(uri: str) -> RedisURI:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://…``, ``redis+cluster://H:P,H:P``,
    ``redis+sentinel://H:P[,H:P]/SERVICE[/DB]``.

    Raises:
        StorageURIError: naming what is wrong.
    """
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise StorageURIError(f"{uri!r}: options after '?' or '#' are not supported")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    addresses = tuple(_address(uri, text) for text in hosts.split(","))
    path = [part for part in parts.path.split("/") if part]
    service = ""
    if parts.scheme == "redis+sentinel":
        if not path:
            raise StorageURIError(
                f"{uri!r}: name the master after the sentinels, redis+sentinel://H:P/SERVICE"
            )
        service = unquote(path.pop(0))
    if parts.scheme == "redis+cluster" and path:
        raise StorageURIError(f"{uri!r}: a Cluster has only database 0; remove {parts.path!r}")
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise StorageURIError(f"{uri!r}: {parts.path!r} is not a database number")
    if len(addresses) > 1 and parts.scheme in ("redis", "rediss"):
        raise StorageURIError(f"{uri!r}: one address for a single Redis (redis+cluster:// for several)")
    return RedisURI(
        parts.scheme,
        addresses,
        unquote(username) or None,
        unquote(password) or None,
        int(path[0]) if path else 0,
        service,
    )


def _address(uri: str, text: str) -> Address:
    host, separator, port = text.rpartition(":")
    if not separator:
        host, port = text, "6379"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageURIError(f"{uri!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _handshake(uri: RedisURI, extra: tuple[bytes, ...] = ()) -> tuple[bytes, ...]:
    commands = []
    if uri.password is not None:
        commands.append(encode(b"AUTH", *([uri.username] if uri.username else []), uri.password))
    if uri.database:
        commands.append(encode(b"SELECT", uri.database))
    # Loaded on every new connection: a restarted or promoted server has an empty script cache.
    commands.append(encode(b"SCRIPT", b"LOAD", SCRIPT))
    return (*commands, *extra)


def _fixed(address: Address) -> Callable[[], asyncio.Future[Address]]:
    def source() -> asyncio.Future[Address]:
        future: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
        future.set_result(address)
        return future

    return source


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class Single:
    """One server."""

    one_server = True

    def __init__(self, uri: RedisURI) -> None:
        address = uri.addresses[0]
        self.link = Link(_name(address), _fixed(address), _handshake(uri), expect_ok, uri.tls)

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # down now: decisions meet it as configured
            await self.link.start()

    def link_for(self, key: bytes) -> Link:
        return self.link

    def link_at(self, address: str) -> Link | None:
        return None

    def changed(self) -> None:
        """Nothing to look up again: the address is fixed."""

    def close(self) -> None:
        self.link.close()


def _expect_master(replies: list[Reply]) -> None:
    expect_ok(replies)
    role = replies[-1]
    if not (isinstance(role, list) and role and role[0] == b"master"):
        raise ReplyError("READONLY the server Sentinel named is not a master (yet)")


class Sentinel(Single):
    """The master the sentinels name; asked again before every new connection."""

    def __init__(self, uri: RedisURI) -> None:
        self._sentinels = uri.addresses
        self._service = uri.service
        # Sentinels are asked in plain TCP; the master is reached as the URI says.
        handshake = _handshake(uri, (encode(b"ROLE"),))
        self.link = Link(f"sentinel master {uri.service}", self._master, handshake, _expect_master, uri.tls)

    async def _master(self) -> Address:
        errors = []
        for sentinel in self._sentinels:
            try:
                reply = await ask_once(
                    sentinel, encode(b"SENTINEL", b"get-master-addr-by-name", self._service), None
                )
            except Exception as error:  # this sentinel is down or odd: ask the next
                errors.append(f"{_name(sentinel)}: {error or type(error).__name__}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                host, port = reply
                if isinstance(host, bytes) and isinstance(port, bytes):
                    return host.decode(), int(port)
            errors.append(f"{_name(sentinel)}: does not know master {self._service!r}")
        raise ConnectionError("no sentinel named a master: " + "; ".join(errors))

    def changed(self) -> None:
        """A master that says READONLY was demoted: reconnect, asking the sentinels anew."""
        if self.link.ready is not None:
            self.link.ready.close()


def hash_slot(key: bytes) -> int:
    """Redis Cluster's slot of ``key`` (CRC16/XMODEM of its hash tag, or of the whole key)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


class Cluster:
    """A link per master; the slot map from ``CLUSTER SLOTS``, read again when the cluster moves."""

    one_server = False

    def __init__(self, uri: RedisURI) -> None:
        self._uri = uri
        self._seeds = uri.addresses
        self._links: dict[str, Link] = {}
        first = self._link(_name(self._seeds[0]))
        self._slots: list[Link] = [first] * SLOTS
        self._changed = asyncio.Event()
        self._refreshing: asyncio.Task[None] | None = None
        self._mapped = asyncio.Event()

    def _link(self, name: str) -> Link:
        link = self._links.get(name)
        if link is None:
            host, _, port = name.rpartition(":")
            link = Link(name, _fixed((host, int(port))), _handshake(self._uri), expect_ok, self._uri.tls)
            self._links[name] = link
        return link

    async def start(self) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._keep_map())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * MAP_REFRESH_TROUBLED + 1):
                await self._mapped.wait()
        await asyncio.gather(*(link.start() for link in set(self._slots)), return_exceptions=True)

    def link_for(self, key: bytes) -> Link:
        if self._refreshing is None:  # a store opened by a reload, never warmed up
            self._refreshing = asyncio.create_task(self._keep_map())
        return self._slots[hash_slot(key)]

    def link_at(self, address: str) -> Link | None:
        """The link to the node a MOVED or ASK reply names."""
        return self._link(address)

    def changed(self) -> None:
        self._changed.set()

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for link in self._links.values():
            link.close()

    async def _keep_map(self) -> None:
        while True:
            troubled = not await self._refresh()
            troubled = troubled or any(link.ready is None for link in set(self._slots))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MAP_REFRESH_TROUBLED if troubled else MAP_REFRESH_QUIET):
                    await self._changed.wait()
            self._changed.clear()

    async def _refresh(self) -> bool:
        """Read the slot map from any node that answers; whether one did."""
        candidates = [link.name for link in self._links.values() if link.ready is not None]
        candidates += [_name(seed) for seed in self._seeds if _name(seed) not in candidates]
        for name in candidates:
            host, _, port = name.rpartition(":")
            try:
                reply = await ask_once((host, int(port)), encode(b"CLUSTER", b"SLOTS"), self._uri.tls)
                self._apply(reply, host)
            except Exception as error:  # any node's failure: ask the next
                log.debug("cluster slot map unavailable", extra={"node": name, "error": str(error)})
                continue
            self._mapped.set()
            return True
        return False

    def _apply(self, reply: Reply, asked: str) -> None:
        if not isinstance(reply, list) or not reply:
            raise ValueError(f"CLUSTER SLOTS answered {reply!r}")
        slots = list(self._slots)
        for entry in reply:
            if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
                raise ValueError(f"CLUSTER SLOTS entry {entry!r}")
            first, last, master = entry[0], entry[1], entry[2]
            if not isinstance(first, int) or not isinstance(last, int):
                raise ValueError(f"CLUSTER SLOTS entry {entry!r}")
            host = master[0].decode() if isinstance(master[0], bytes) and master[0] else asked
            if not isinstance(master[1], int):
                raise ValueError(f"CLUSTER SLOTS entry {entry!r}")
            link = self._link(f"{host}:{master[1]}")
            slots[first : last + 1] = [link] * (last - first + 1)
        self._slots = slots
