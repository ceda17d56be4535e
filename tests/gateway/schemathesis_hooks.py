"""Schemathesis hooks for the HTTP door's tests (SCHEMATHESIS_HOOKS): newline-delimited JSON bodies."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> bytes:
    """A client-streaming request body: one generated message, or each of a generated list, a line."""
    messages = value if isinstance(value, list) else [value]
    return "".join(json.dumps(message) + "\n" for message in messages).encode()
