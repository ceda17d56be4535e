"""Which Redis server holds a budget: one server, the master Sentinel names, or a Cluster's node.

Each topology keeps a :class:`Link` per server it uses. ``start`` makes the first attempts (the
gateway's warm-up waits for them); nothing here runs per decision but ``link_for``.

- ``redis://`` / ``rediss://``: one server, at the URI's address.
- ``redis+sentinel://H:P[,H:P…]/SERVICE``: the master that the sentinels name for SERVICE, asked
  again at every reconnect, and proven a master (``ROLE``) before a decision is sent to it, so
  after a failover the link finds the promoted replica by itself.
- ``redis+cluster://H:P[,H:P…]``: a link per master, chosen by the key's hash slot from the map
  ``CLUSTER SLOTS`` gives; the map is read again when a node is lost or redirects a command.

``rediss`` in place of ``redis`` (``rediss+cluster://``, ``rediss+sentinel://``) reaches every
server over TLS: the data servers, the nodes a slot map names and the sentinels alike.

Every connection logs in first (:class:`~gateway.policy.ratelimit.connection.Login`): to the data
servers with the URI's user and password (or ``password_env``'s), to the sentinels with their own
(``sentinel_password``), the one-off connections that read a slot map or ask a sentinel included.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from gateway.config.secrets import shown_uri
from gateway.policy.ratelimit.connection import (
    Address,
    HandshakeCheck,
    Link,
    Login,
    Refused,
    Tls,
    ask_once,
    expect_ok,
)
from gateway.policy.ratelimit.resp import Reply, ReplyError, encode
from gateway.policy.ratelimit.script import SCRIPT, SHA

log = logging.getLogger("gateway.ratelimit")

SLOTS = 16384

# Seconds between reads of a Cluster's slot map while every master answers, and while one does not.
MAP_REFRESH_QUIET, MAP_REFRESH_TROUBLED = 10.0, 0.5

# Seconds the warm-up waits for the store to be ready (a server still starting beside the gateway,
# say) before the gateway serves without it, its calls meeting on_storage_error.
WARM_UP_SECONDS = 2.0


class StorageURIError(ValueError):
    """A storage URI this gateway cannot use; the message says why."""


@dataclass(frozen=True)
class RedisURI:
    scheme: str
    addresses: tuple[Address, ...]
    username: str | None
    password: str | None = field(repr=False)
    database: int
    service: str  # Sentinel's master name; "" otherwise

    @property
    def tls(self) -> bool:
        """Whether every server is reached over TLS (``rediss``, ``rediss+cluster``, ``rediss+sentinel``)."""
        return self.scheme.startswith("rediss")

    @property
    def topology(self) -> str:
        """``cluster``, ``sentinel``, or ``""`` for a single server."""
        return _topology(self.scheme)


def _topology(scheme: str) -> str:
    return scheme.partition("+")[2]


@dataclass(frozen=True)
class Access:
    """What reaching the servers takes besides the URI: the [rate_limit] fields beside ``storage``."""

    # password_env's value: the data servers' password when the URI holds none.
    password: str | None = field(default=None, repr=False)
    # The sentinels' own password (sentinel_password or sentinel_password_env).
    sentinel_password: str | None = field(default=None, repr=False)
    # [rate_limit.tls] for a rediss scheme; None there: the system's CAs and each server's host.
    tls: Tls | None = None


def _data_login(uri: RedisURI, access: Access) -> Login:
    return Login(uri.username, uri.password if uri.password is not None else access.password)


def _tls(uri: RedisURI, access: Access) -> Tls | None:
    if not uri.tls:
        return None
    return access.tls if access.tls is not None else Tls(ssl.create_default_context())


def parse_uri(uri: str) -> RedisURI:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``redis+cluster://H:P,H:P``,
    ``redis+sentinel://H:P[,H:P]/SERVICE[/DB]``, and each with ``rediss`` (TLS) for ``redis``.

    Raises:
        StorageURIError: naming what is wrong.
    """
    scheme, _, rest = uri.partition("://")
    # The user info ends at the last "@", as shown_uri reads it: a password may hold "/", "?", "#"
    # or "@" that its writer did not percent-encode, and none of it may be taken for a host or a path
    # (and so be shown in a message).
    at = rest.rfind("@")
    credentials, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    parts = urlsplit(f"{scheme}://{rest}")
    if parts.query or parts.fragment:
        raise StorageURIError(f"{shown_uri(uri)!r}: options after '?' or '#' are not supported")
    hosts = parts.netloc
    username, _, password = credentials.partition(":")
    addresses = tuple(_address(uri, text) for text in hosts.split(","))
    path = [part for part in parts.path.split("/") if part]
    service = ""
    topology = _topology(parts.scheme)
    if topology == "sentinel":
        if not path:
            raise StorageURIError(
                f"{shown_uri(uri)!r}: name the master after the sentinels, {parts.scheme}://H:P/SERVICE"
            )
        service = unquote(path.pop(0))
    if topology == "cluster" and path:
        raise StorageURIError(f"{shown_uri(uri)!r}: a Cluster has only database 0; remove {parts.path!r}")
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise StorageURIError(f"{shown_uri(uri)!r}: {parts.path!r} is not a database number")
    if len(addresses) > 1 and not topology:
        raise StorageURIError(
            f"{shown_uri(uri)!r}: one address for a single Redis (redis+cluster:// for several)"
        )
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
        raise StorageURIError(f"{shown_uri(uri)!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _handshake(
    uri: RedisURI, extra: HandshakeCheck | None = None
) -> tuple[tuple[bytes, ...], HandshakeCheck]:
    """What a new data connection sends after its login, and the check of the replies: SELECT the
    database, load the script, and ``extra``'s command (ROLE), if any."""
    commands = [encode(b"SELECT", uri.database)] if uri.database else []
    # Loaded on every new connection: a restarted or promoted server has an empty script cache.
    commands.append(encode(b"SCRIPT", b"LOAD", SCRIPT))
    loaded = len(commands) - 1
    if extra is not None:
        commands.append(encode(b"ROLE"))

    def check(replies: list[Reply]) -> None:
        expect_ok(replies)
        if replies[loaded] != SHA:
            raise ReplyError(f"ERR SCRIPT LOAD answered {replies[loaded]!r}, not the script's SHA1")
        if extra is not None:
            extra(replies)

    return tuple(commands), check


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

    def __init__(self, uri: RedisURI, access: Access) -> None:
        address = uri.addresses[0]
        commands, check = _handshake(uri)
        login, tls = _data_login(uri, access), _tls(uri, access)
        self.link = Link(_name(address), _fixed(address), commands, check, tls, login)

    async def start(self, deadline: float) -> bool:
        """Connect, log in and load the script by ``deadline`` (the loop's clock); whether it was done."""
        return await self.link.ready_by(deadline)

    def link_for(self, key: bytes) -> Link:
        return self.link

    def link_at(self, address: str) -> Link | None:
        return None

    def unread(self) -> bool:
        """Whether replies wait on a connection, not read yet."""
        return self.link.unread()

    def changed(self) -> None:
        """Nothing to look up again: the address is fixed."""

    def close(self) -> None:
        self.link.close()


def _expect_master(replies: list[Reply]) -> None:
    role = replies[-1]
    if not (isinstance(role, list) and role and role[0] == b"master"):
        raise ReplyError("READONLY the server Sentinel named is not a master (yet)")


class Sentinel(Single):
    """The master the sentinels name; asked again before every new connection."""

    def __init__(self, uri: RedisURI, access: Access) -> None:
        self._service = uri.service
        # Sentinels are logged in to with their own password, the master with the data password;
        # both over TLS with a rediss scheme.
        sentinel_login = Login(
            password=access.sentinel_password,
            configured_by="rate_limit.sentinel_password or sentinel_password_env",
        )
        self._sentinels = tuple(
            (address, replace(sentinel_login, server=f"the sentinel at {_name(address)}"))
            for address in uri.addresses
        )
        commands, check = _handshake(uri, _expect_master)
        login, self._tls = _data_login(uri, access), _tls(uri, access)
        self.link = Link(f"sentinel master {uri.service}", self._master, commands, check, self._tls, login)

    async def _master(self) -> Address:
        """The address the first sentinel that answers names for the service.

        Raises:
            Refused: no sentinel named one, and one at least refused the login (so it is not down).
            ConnectionError: no sentinel named one.
        """
        errors = []
        refused: Refused | None = None
        question = encode(b"SENTINEL", b"get-master-addr-by-name", self._service)
        for sentinel, login in self._sentinels:
            try:
                reply = await ask_once(sentinel, question, self._tls, login)
            except Refused as error:
                refused = refused or error
                errors.append(str(error))
                continue
            except Exception as error:  # this sentinel is down or odd: ask the next
                errors.append(f"{_name(sentinel)}: {login.hide(str(error)) or type(error).__name__}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                host, port = reply
                if isinstance(host, bytes) and isinstance(port, bytes):
                    return host.decode(), int(port)
            if isinstance(reply, ReplyError):
                errors.append(f"{_name(sentinel)}: {login.hide(str(reply))}")
            else:
                errors.append(f"{_name(sentinel)}: does not know master {self._service!r}")
        words = "no sentinel named a master: " + "; ".join(errors)
        if refused is not None:
            raise Refused(words, refused.kind)
        raise ConnectionError(words)

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

    def __init__(self, uri: RedisURI, access: Access) -> None:
        self._uri = uri
        self._handshake = _handshake(uri)
        self._login, self._tls = _data_login(uri, access), _tls(uri, access)
        self._seeds = uri.addresses
        self._links: dict[str, Link] = {}
        self._map_error = ""  # why the slot map could not be read last time ("" : it was)
        first = self._link(_name(self._seeds[0]))
        self._slots: list[Link] = [first] * SLOTS
        self._changed = asyncio.Event()
        self._refreshing: asyncio.Task[None] | None = None
        self._mapped = asyncio.Event()

    def _link(self, name: str) -> Link:
        link = self._links.get(name)
        if link is None:
            host, _, port = name.rpartition(":")
            commands, check = self._handshake
            link = Link(name, _fixed((host, int(port))), commands, check, self._tls, self._login)
            self._links[name] = link
        return link

    async def start(self, deadline: float) -> bool:
        """Read the slot map, then connect to every master it names, by ``deadline``; whether both
        were done (without the map, the seeds alone are connected, and decisions may be redirected)."""
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._keep_map())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._mapped.wait()
        ready = await asyncio.gather(*(link.ready_by(deadline) for link in set(self._slots)))
        return self._mapped.is_set() and all(ready)

    def link_for(self, key: bytes) -> Link:
        if self._refreshing is None:  # a store opened by a reload, never warmed up
            self._refreshing = asyncio.create_task(self._keep_map())
        return self._slots[hash_slot(key)]

    def link_at(self, address: str) -> Link | None:
        """The link to the node a MOVED or ASK reply names."""
        return self._link(address)

    def changed(self) -> None:
        self._changed.set()

    def unread(self) -> bool:
        """Whether replies wait on a connection to any node, not read yet."""
        return any(link.unread() for link in self._links.values())

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
        errors = []
        for name in candidates:
            host, _, port = name.rpartition(":")
            try:
                reply = await ask_once(
                    (host, int(port)), encode(b"CLUSTER", b"SLOTS"), self._tls, self._login
                )
                self._apply(reply, host)
            except Exception as error:  # any node's failure: ask the next
                errors.append(f"{name}: {self._login.hide(str(error)) or type(error).__name__}")
                continue
            if self._map_error:
                log.info("cluster slot map read again", extra={"node": name})
            self._map_error = ""
            self._mapped.set()
            return True
        # Said once per new reason: without the map every decision may cost a MOVED (or fail).
        reasons = "; ".join(errors)
        if reasons != self._map_error:
            log.warning("cluster slot map unavailable", extra={"error": reasons})
        self._map_error = reasons
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
