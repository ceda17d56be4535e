"""Redis's wire protocol (RESP2): commands out, replies in, parsed as bytes arrive.

Only what the rate limiter sends and reads: commands are arrays of bulk strings; replies are
simple strings, errors, integers, bulk strings and (nested) arrays. An error reply is returned
as a :class:`ReplyError` value, not raised, so that the one command it answers fails alone.
"""

from __future__ import annotations

from typing import Union

Reply = Union[bytes, int, None, "ReplyError", list["Reply"]]


class ReplyError(Exception):
    """An error reply from Redis (``-ERR …``, ``-MOVED …``, ``-NOSCRIPT …``), its text as is."""

    @property
    def kind(self) -> str:
        """The error's first word: ``ERR``, ``MOVED``, ``NOSCRIPT``, ``READONLY``, ``CLUSTERDOWN``…"""
        return str(self).split(" ", 1)[0]


class ProtocolError(Exception):
    """The bytes from Redis are not RESP2: the connection cannot be trusted any further."""


def encode(*arguments: bytes | str | int) -> bytes:
    """One command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        data = argument if isinstance(argument, bytes) else str(argument).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


class ReplyParser:
    """Turns the bytes of a connection into replies, however the bytes were split."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by ``data``, in order.

        Raises:
            ProtocolError: a reply of a type RESP2 does not have.
        """
        buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        position = 0
        try:
            while position < len(buffer):
                reply, position = _parse(buffer, position)
                replies.append(reply)
        except _Incomplete:
            pass
        self._buffer = buffer[position:]
        return replies


def _line(buffer: bytes, position: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    return buffer[position:end], end + 2


def _parse(buffer: bytes, position: int) -> tuple[Reply, int]:
    kind = buffer[position]
    line, position = _line(buffer, position + 1)
    if kind == 0x3A:  # ':' integer
        return int(line), position
    if kind == 0x24:  # '$' bulk string
        length = int(line)
        if length < 0:
            return None, position
        end = position + length
        if len(buffer) < end + 2:
            raise _Incomplete
        return buffer[position:end], end + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, position
        items: list[Reply] = []
        for _ in range(count):
            item, position = _parse(buffer, position)
            items.append(item)
        return items, position
    if kind == 0x2B:  # '+' simple string
        return line, position
    if kind == 0x2D:  # '-' error
        return ReplyError(line.decode("utf-8", "replace")), position
    raise ProtocolError(f"not a RESP2 reply (type byte {kind!r})")
