"""A verified token's claims as the rest of the gateway uses them: dotted paths, allow rules, metadata.

A claim path is a name, or names joined by dots into nested objects (``realm_access.roles``); a
claim whose own name holds dots (``https://example.com/tenant``) is found by that whole name
first. Values reach metadata as text: a string as it is when it is printable ASCII; a
number or a boolean as JSON writes it; a list of strings joined by commas; anything else as
compact ASCII JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.schema import ClaimRule

# The metadata forwarded claims travel in: x-jwt-<path>. The gateway's own namespace, never taken
# from the caller (see gateway/call/metadata.py).
FORWARDED_PREFIX = "x-jwt-"

_MISSING = object()


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` (``a.b.c``) in ``claims``, or None when some part is missing."""
    value = claims.get(path, _MISSING)
    if value is not _MISSING:
        return value
    current: Any = claims
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
        if current is None:
            return None
    return current


def as_text(value: Any) -> str:
    """A claim's value as one metadata value (printable ASCII)."""
    if isinstance(value, str) and value.isascii() and value.isprintable():
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(item, str) and item.isascii() and item.isprintable() and "," not in item
            for item in value
        )
    ):
        return ",".join(value)
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def forwarded_header(path: str) -> str:
    """The metadata key a forwarded claim travels in: ``x-jwt-`` and the path in lower case."""
    return FORWARDED_PREFIX + path.lower()


def forwarded_claims(claims: Mapping[str, Any], paths: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``(x-jwt-<path>, value)`` for each of ``paths`` the token carries."""
    found = ((path, claim_at(claims, path)) for path in paths)
    return tuple((forwarded_header(path), as_text(value)) for path, value in found if value is not None)


@dataclass(frozen=True)
class ClaimTest:
    """One allow rule, ready to test a token's claims; ``wanted`` says what it asks, in words."""

    claim: str
    contains: str | None
    equals: str | int | bool | None

    @classmethod
    def of(cls, rule: ClaimRule) -> ClaimTest:
        return cls(rule.claim, rule.contains, rule.equals)

    @property
    def wanted(self) -> str:
        if self.contains is not None:
            return f"claim {self.claim} must contain {self.contains!r}"
        return f"claim {self.claim} must be {self.equals!r}"

    def passes(self, claims: Mapping[str, Any]) -> bool:
        value = claim_at(claims, self.claim)
        if self.contains is not None:
            if isinstance(value, str):
                return self.contains in value.split()
            return isinstance(value, list) and self.contains in value
        # bool is an int in Python: true must not equal 1.
        return value == self.equals and isinstance(value, bool) == isinstance(self.equals, bool)
