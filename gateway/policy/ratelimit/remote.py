"""Budgets in Redis: one script call per decision (per rule in a Cluster), never a second increment.

Whatever goes wrong on the way (no connection, a lost one, an error reply, a reply of the wrong
shape, a cluster that is down or moving) is a :class:`StoreUnavailable` with a ``kind`` for the
metrics; the caller's timeout covers the rest. A command is sent again only when Redis said it
did not run it: ``NOSCRIPT`` (sent once more with the script's body), ``MOVED`` and ``ASK`` (sent
once to the node named).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from gateway.config.secrets import shown_uri
from gateway.policy.ratelimit.connection import ConnectionLost, Link, Refused
from gateway.policy.ratelimit.resp import Reply, ReplyError, encode
from gateway.policy.ratelimit.script import SCRIPT, SHA
from gateway.policy.ratelimit.topology import WARM_UP_SECONDS, Access, Cluster, Sentinel, Single, parse_uri

# Error replies counted under a kind of their own; any other is "error".
KNOWN_ERRORS = frozenset(
    {
        "MOVED",
        "ASK",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "OOM",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
    }
)

ASKING = encode(b"ASKING")

# An outcome of one rule: allowed, remaining, milliseconds until there is room again.
Outcome = tuple[bool, int, int]


# Turns of the event loop a decision's deadline may move by while Redis's replies wait unread
# (RedisStore.within): one reads them, one resumes the decision; more allows for a busy Cluster.
LAST_TURNS = 4


class StoreUnavailable(Exception):
    """The rate-limit storage failed, or did not answer within the storage timeout.

    ``kind``: ``timeout``, ``connection``, ``protocol``, or an error reply's word (``readonly``,
    ``clusterdown``…, else ``error``).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class RedisStore:
    """The Redis behind a ``redis://``, ``redis+sentinel://`` or ``redis+cluster://`` URI (``rediss``: TLS),
    reached and logged in to as ``access`` says.

    Raises (on construction):
        StorageURIError: the URI is not one this store can use.
    """

    def __init__(self, uri: str, access: Access | None = None) -> None:
        self.uri = uri
        parsed = parse_uri(uri)
        self.access = access = access if access is not None else Access()
        self.topology: Single | Cluster
        if parsed.topology == "cluster":
            self.topology = Cluster(parsed, access)
        elif parsed.topology == "sentinel":
            self.topology = Sentinel(parsed, access)
        else:
            self.topology = Single(parsed, access)
        # A call's rules all go to one server in one script call, unless the budgets are spread
        # over a Cluster's nodes: then one call per rule.
        self.one_server = self.topology.one_server

    async def start(self) -> bool:
        """Connect, log in, load the script and learn the topology before the first decision needs
        it, waiting WARM_UP_SECONDS at most; whether all of it was done. A server down now (or
        refusing the login) is not an error here: it is logged, and decisions meet it as configured."""
        return await self.topology.start(asyncio.get_running_loop().time() + WARM_UP_SECONDS)

    def close(self) -> None:
        self.topology.close()

    @contextlib.asynccontextmanager
    async def within(self, seconds: float) -> AsyncIterator[None]:
        """``asyncio.timeout(seconds)`` for waiting on Redis, where the time the event loop was too
        busy to read Redis's replies counts as the gateway's, not Redis's.

        A burst of decisions on a loaded machine can keep the loop from reading replies that came
        back in time. At the deadline, while replies wait in a socket unread, the deadline moves to
        the loop's next turn, which reads them; for LAST_TURNS turns at most, so that a Cluster node
        that keeps answering others does not keep a call waiting on one that is stuck.

        Raises:
            TimeoutError: no reply by then.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as clock:
            handle: asyncio.Handle

            def expire(turns: int) -> None:
                nonlocal handle
                if turns and self.topology.unread():
                    handle = loop.call_soon(expire, turns - 1)
                else:
                    clock.reschedule(loop.time())

            handle = loop.call_later(seconds, expire, LAST_TURNS)
            try:
                yield
            finally:
                handle.cancel()

    async def spend(self, keys: Sequence[bytes], arguments: Sequence[bytes]) -> list[Outcome]:
        """Run the script for one group of rules (``keys``: two per rule; ``arguments``: three).

        Raises:
            StoreUnavailable: Redis failed, or answered what the script never returns.
        """
        topology = self.topology
        link = topology.link_for(keys[0])
        command = encode(b"EVALSHA", SHA, len(keys), *keys, *arguments)
        reply = await _send(link, command)
        if isinstance(reply, ReplyError):
            reply = await self._not_run(reply, link, command, keys, arguments)
        if not isinstance(reply, list) or len(reply) % 3 or not all(isinstance(n, int) for n in reply):
            raise StoreUnavailable(f"{shown_uri(self.uri)}: the script answered {reply!r}", "protocol")
        values: list[int] = reply  # type: ignore[assignment]
        return [(values[i] == 1, values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]

    async def _not_run(
        self,
        error: ReplyError,
        link: Link,
        command: bytes,
        keys: Sequence[bytes],
        arguments: Sequence[bytes],
    ) -> Reply:
        """Send again what Redis did not run, where it says to; else the error is the store's failure."""
        kind = error.kind
        if kind == "NOSCRIPT":  # a script cache flushed since the connection loaded it
            return _unless_error(
                await _send(link, encode(b"EVAL", SCRIPT, len(keys), *keys, *arguments)), link
            )
        if kind in ("MOVED", "ASK"):
            self.topology.changed()
            parts = str(error).split(" ")
            target = self.topology.link_at(parts[2]) if len(parts) == 3 else None
            if target is not None:
                return _unless_error(await _send(target, command, asking=kind == "ASK"), target)
        if kind == "READONLY":  # a demoted master: find the new one
            self.topology.changed()
        raise _failure(error, link)


async def _send(link: Link, command: bytes, asking: bool = False) -> Reply:
    try:
        if not asking:
            return await link.send(command)
        # ASK: this one command may run on the importing node, if ASKING precedes it there.
        connection = await link.connection()
        connection.send(ASKING).add_done_callback(_ignore)
        return await connection.send(command)
    except (ConnectionLost, OSError) as error:
        raise StoreUnavailable(f"{link.name}: {error}", "connection") from None
    except Refused as error:  # the login, in words (never the password)
        raise StoreUnavailable(f"{link.name}: {error}", error.kind) from None
    except ReplyError as error:  # a handshake that failed otherwise (a replica, a database out of range)
        raise _failure(error, link) from None


def _ignore(done: asyncio.Future[Reply]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: a lost connection fails the command that follows anyway


def _unless_error(reply: Reply, link: Link) -> Reply:
    if isinstance(reply, ReplyError):
        raise _failure(reply, link)
    return reply


def _failure(error: ReplyError, link: Link) -> StoreUnavailable:
    # A decision refused for the login (an ACL changed since the handshake), in the login's words.
    refused = link.login.refused(error)
    if refused is not None:
        return StoreUnavailable(f"{link.name}: {refused}", refused.kind)
    kind = error.kind
    return StoreUnavailable(
        f"redis: {link.login.hide(str(error))}", kind.lower() if kind in KNOWN_ERRORS else "error"
    )
