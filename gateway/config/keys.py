"""API keys at rest: the ``sha256:<hex>`` form a config may hold instead of a key, and what a key may be."""

from __future__ import annotations

import hashlib
import string

DIGEST_PREFIX = "sha256:"
_HEX_DIGITS = frozenset(string.hexdigits)


def key_digest(key: str | bytes) -> bytes:
    """The SHA-256 digest of a key as a client sends it."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def written_digest(key: str) -> str:
    """The form a config holds: ``sha256:`` and the key's digest in hex."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_written_digest(text: str) -> bool:
    return text.startswith(DIGEST_PREFIX)


def parse_written_digest(text: str) -> bytes:
    """The digest in ``sha256:<64 hex digits>``.

    Raises:
        ValueError: the text after ``sha256:`` is not 64 hex digits (the message never shows it).
    """
    digits = text.removeprefix(DIGEST_PREFIX)
    if len(digits) != 64 or not _HEX_DIGITS.issuperset(digits):
        raise ValueError(
            "a key written as 'sha256:…' needs the 64 hex digits of the key's SHA-256 digest after the "
            "prefix; print them with `grpc-gateway hash-key`"
        )
    return bytes.fromhex(digits)


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key, or None. Never quotes the key."""
    if not key:
        return "the key is empty"
    # gRPC metadata values are visible ASCII; a key with anything else could never be sent.
    if not (key.isascii() and key.isprintable()):
        return "a key must be printable ASCII (gRPC metadata can carry nothing else)"
    if key != key.strip():
        return "a key must not begin or end with a space"
    return None
