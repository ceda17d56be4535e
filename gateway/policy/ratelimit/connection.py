"""One Redis server, kept connected: a pipelined connection and the link that keeps it up.

Why not a pool of connections taken and given back per command (redis-py, coredis): a pooled
connection that sits idle while Redis restarts is not read, so nobody notices it died until a
decision is sent on it and lost. Here the event loop watches the one socket all the time, so a
closed connection is noticed the moment Redis closes it, and replaced in the background; and every
command in flight shares it (pipelined: replies come back in the order commands went out), so a
burst of decisions costs one write and one read, not a round trip each.

A connection is *ready* only once its handshake (AUTH, SELECT, loading the script, checking the
server's role) has been answered: a decision is never the first thing sent on a connection. Every
connection the gateway opens logs in first, the one-off ones too (a Cluster's slot map, Sentinel's
answer), and a refused login is reported in words (:class:`Refused`), never with the password.
"""

from __future__ import annotations

import asyncio
import logging
import select
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from gateway.config.secrets import HIDDEN
from gateway.policy.ratelimit.resp import ProtocolError, Reply, ReplyError, ReplyParser, encode

log = logging.getLogger("gateway.ratelimit")

Address = tuple[str, int]

# Seconds a new connection (TCP, TLS and handshake) may take before the attempt counts as failed.
CONNECT_TIMEOUT = 1.0

# Seconds between attempts to reach a server that is down: from the first, doubling to the last.
RETRY_FIRST, RETRY_MOST = 0.02, 0.25

# A connection that answered nothing for this long while commands wait is taken for dead (a
# server gone without closing the socket) and replaced; a paused Redis answers late, not never.
STALLED_SECONDS = 2.0

# Commands waiting on one connection beyond which new ones fail at once rather than queue.
MOST_IN_FLIGHT = 10_000


class ConnectionLost(Exception):
    """The connection closed, or could not be made, before the command was answered."""


class Refused(Exception):
    """A server turned the gateway's login down, or its user may not run what the gateway needs.

    The message says so in words and never holds the password; ``kind`` names it for the metrics:
    ``noauth`` (a password is needed and none is configured), ``wrongpass``, ``noperm`` (an ACL user
    without a permission the gateway needs) or ``auth`` (a password is configured, none is needed).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Tls:
    """TLS to a server: the context (CA, client certificate), and the name its certificate must
    carry when it is not the host connected to. Two are equal when made from the same files as they
    were then (``origin``), a context being comparable only by identity."""

    context: ssl.SSLContext = field(compare=False)
    server_name: str = ""
    origin: tuple[object, ...] = ()

    def hostname(self, host: str) -> str:
        return self.server_name or host


@dataclass(frozen=True)
class Login:
    """What a connection says before anything else: ``AUTH [USER] PASSWORD``, nothing without a password.

    ``server`` and ``configured_by`` are words for messages: who refused, and which settings give
    the password that was missing or wrong.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    server: str = "Redis"
    configured_by: str = "the storage URI's password or rate_limit.password_env"

    @property
    def commands(self) -> tuple[bytes, ...]:
        if self.password is None:
            return ()
        return (encode(b"AUTH", *([self.username] if self.username else []), self.password),)

    def hide(self, text: str) -> str:
        """``text`` with the password, should a server ever echo it, shown as ``***``."""
        return text.replace(self.password, HIDDEN) if self.password else text

    def check(self, replies: Sequence[Reply]) -> None:
        """Raise :class:`Refused` for the first reply that turns the login down. ``replies``: those
        of :attr:`commands` and then of the commands after them, any of which may say NOAUTH (the
        first command a password-protected server gets without AUTH does).

        Raises:
            Refused: in words, naming the user, never the password.
        """
        for position, reply in enumerate(replies):
            if isinstance(reply, ReplyError):
                refused = self.refused(reply)
                if refused is None and position < len(self.commands):  # AUTH itself failed
                    user = self.username or "default"
                    refused = Refused(
                        f"{self.server} refused AUTH as user {user!r}: {self.hide(str(reply))}", "auth"
                    )
                if refused is not None:
                    raise refused

    def refused(self, error: ReplyError) -> Refused | None:
        """``error`` in words if it is about the login or the user's permissions; else None."""
        user = self.username or "default"
        text = self.hide(str(error))
        kind = error.kind
        if kind == "NOAUTH":
            if self.password is None:
                words = f"{self.server} asks for a password and none is configured ({self.configured_by})"
            else:
                words = f"{self.server} still asks for a password after AUTH as user {user!r}"
            return Refused(words, "noauth")
        if kind == "WRONGPASS" or (kind == "ERR" and "invalid password" in text):
            return Refused(
                f"{self.server} refused the password for user {user!r} (a wrong password, or a user "
                "it does not know or has disabled)",
                "wrongpass",
            )
        if kind == "ERR" and "without any password configured" in text:
            return Refused(
                f"{self.server} has no password for user {user!r}, yet one is configured "
                f"({self.configured_by}): remove it, or set the server's password",
                "auth",
            )
        if kind == "NOPERM":
            return Refused(
                f"{self.server} user {user!r} lacks a permission the gateway needs: {text}", "noperm"
            )
        return None


class RedisConnection(asyncio.Protocol):
    """Commands out in the order they are sent, replies matched to them in the same order."""

    def __init__(self, on_lost: Callable[[RedisConnection], None]) -> None:
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._parser = ReplyParser()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.last_reply = time.monotonic()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open = True

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        """Queue one encoded command; its reply (a ReplyError is a reply too) resolves the future.

        Commands sent in one turn of the event loop go out in one write.
        """
        future: asyncio.Future[Reply] = self._loop.create_future()
        if not self.open or len(self._waiting) >= MOST_IN_FLIGHT:
            future.set_exception(ConnectionLost("not connected" if not self.open else "too many in flight"))
            return future
        if not self._out:
            self._loop.call_soon(self._flush)
            if not self._waiting:
                self.last_reply = time.monotonic()  # nothing was owed until now
        self._out.append(command)
        self._waiting.append(future)
        return future

    def _flush(self) -> None:
        if self._transport is not None and self.open:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def unread(self) -> bool:
        """Whether bytes from the server wait in the socket, not read yet: the event loop was busy."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is None or not self.open:
            return False
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
        return bool(readable)

    @property
    def stalled(self) -> bool:
        """Commands are owed and nothing came back for STALLED_SECONDS."""
        return bool(self._waiting) and time.monotonic() - self.last_reply > STALLED_SECONDS

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except (ProtocolError, ValueError) as error:
            log.error("redis sent bytes that are not RESP; reconnecting", extra={"error": str(error)})
            self.close()
            return
        self.last_reply = time.monotonic()
        waiting = self._waiting
        for reply in replies:
            future = waiting.popleft()
            if not future.done():  # else its caller gave up (timeout); the reply is dropped
                future.set_result(reply)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, and fails what waits

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._out.clear()
        lost = ConnectionLost(f"connection lost ({exc})" if exc else "connection closed by the server")
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(lost)
        self._on_lost(self)


# Where to connect next: a fixed address, or one asked of Sentinel at each attempt.
AddressSource = Callable[[], Awaitable[Address]]

# Commands a new connection sends before it is ready, and a check of their replies (raises if wrong).
Handshake = Sequence[bytes]
HandshakeCheck = Callable[[list[Reply]], None]


class Link:
    """Keeps one connection to one server: opened ahead of need, replaced as soon as it is lost.

    While no connection is ready, a decision asks for one (``connection()``): it waits for the
    attempt under way or starts one, so after a restart the first decision finds Redis as soon
    as Redis listens, within the decision's own timeout. Between decisions, failed attempts are
    retried with a short backoff so an idle gateway is ready again too.
    """

    def __init__(
        self,
        name: str,
        address: AddressSource,
        handshake: Handshake,
        check: HandshakeCheck,
        tls: Tls | None,
        login: Login,
    ) -> None:
        self.name = name
        self._address = address
        self.login = login
        self._handshake = (*login.commands, *handshake)
        self._check = check
        self._tls = tls
        self.ready: RedisConnection | None = None
        self._attempt: asyncio.Future[RedisConnection] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = RETRY_FIRST
        self._closed = False
        self.last_error = ""

    def start(self) -> asyncio.Future[RedisConnection]:
        """The attempt under way, or a new one."""
        if self._attempt is None:
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            self._attempt = asyncio.ensure_future(self._open())
            self._attempt.add_done_callback(self._opened)
        return self._attempt

    async def connection(self) -> RedisConnection:
        """A ready connection: the current one, or the next one made.

        Raises:
            ConnectionLost: the server cannot be reached now.
        """
        ready = self.ready
        if ready is not None:
            if not ready.stalled:
                return ready
            log.warning("redis answers nothing; replacing the connection", extra={"server": self.name})
            self.ready = None  # from now on: decisions wait for the next connection
            ready.close()
        # Shielded: a caller that gives up must not cancel the attempt others wait on.
        return await asyncio.shield(self.start())

    async def ready_by(self, deadline: float) -> bool:
        """Attempt until a connection is ready (True), the login is refused, or the event loop's
        clock reaches ``deadline`` (False): for the warm-up, when the server may still be starting."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                while self.ready is None:
                    try:
                        # Shielded: the deadline stops the waiting, not the attempt others may join.
                        await asyncio.shield(self.start())
                    except (Refused, ssl.SSLError):
                        return False  # no use asking again with the same password or certificates
                    except Exception:  # down or starting: the next attempt, soon
                        await asyncio.sleep(min(RETRY_MOST, max(0.0, deadline - loop.time())) / 5)
        except TimeoutError:
            return False
        return True

    async def _open(self) -> RedisConnection:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            host, port = await self._address()
            connection = await _connect(host, port, self._tls, self._lost)
            try:
                replies = await asyncio.gather(*(connection.send(command) for command in self._handshake))
                self.login.check(replies)
                self._check(replies[len(self.login.commands) :])
            except BaseException:
                connection.close()
                raise
        return connection

    def _opened(self, attempt: asyncio.Future[RedisConnection]) -> None:
        self._attempt = None
        if attempt.cancelled():
            return
        error = attempt.exception()
        if error is None:
            connection = attempt.result()
            if self._closed:
                connection.close()
                return
            if self.last_error:
                log.info("redis connection restored", extra={"server": self.name})
            self.ready, self._backoff, self.last_error = connection, RETRY_FIRST, ""
            return
        described = self.login.hide(_describe(error))
        if described != self.last_error:
            log.warning("cannot connect to redis", extra={"server": self.name, "error": described})
        self.last_error = described
        if not self._closed:
            self._retry = asyncio.get_running_loop().call_later(self._backoff, self.start)
            self._backoff = min(self._backoff * 2, RETRY_MOST)

    def _lost(self, connection: RedisConnection) -> None:
        if connection is self.ready:
            self.ready = None
            if not self._closed:
                self.start()

    def unread(self) -> bool:
        """Whether the server's replies wait on the ready connection, not read yet."""
        return self.ready is not None and self.ready.unread()

    async def send(self, command: bytes) -> Reply:
        """Send one command on a ready connection; its reply.

        Raises:
            ConnectionLost: no connection, or it was lost before the reply came.
        """
        ready = self.ready
        if ready is None or ready.stalled:
            ready = await self.connection()
        return await ready.send(command)

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.ready is not None:
            self.ready.close()
            self.ready = None


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT} s"
    if isinstance(error, Refused):
        return str(error)
    return f"{type(error).__name__}: {error}"


async def _connect(
    host: str, port: int, tls: Tls | None, on_lost: Callable[[RedisConnection], None]
) -> RedisConnection:
    _, connection = await asyncio.get_running_loop().create_connection(
        lambda: RedisConnection(on_lost),
        host,
        port,
        ssl=tls.context if tls is not None else None,
        server_hostname=tls.hostname(host) if tls is not None else None,
    )
    return connection


def expect_ok(replies: list[Reply]) -> None:
    """A handshake check: every reply is a success.

    Raises:
        ReplyError: the first error reply (a wrong password, an unknown database…).
    """
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply


async def ask_once(address: Address, request: bytes, tls: Tls | None, login: Login) -> Reply:
    """One command on a connection of its own, after the login, closed after the reply (Sentinel,
    slot maps).

    Raises:
        Refused: the login was turned down, or the command was for want of it.
        ConnectionLost, OSError, TimeoutError: no reply within CONNECT_TIMEOUT.
    """
    host, port = address
    async with asyncio.timeout(CONNECT_TIMEOUT):
        connection = await _connect(host, port, tls, lambda _: None)
        try:
            replies = await asyncio.gather(
                *(connection.send(command) for command in (*login.commands, request))
            )
        finally:
            connection.close()
    login.check(replies)
    return replies[-1]
