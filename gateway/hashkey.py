"""``grpc-gateway hash-key``: prints an API key's ``sha256:<hex>`` digest, for ``key =`` in the config."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from gateway.config.keys import key_problem, written_digest

HASH_KEY_DESCRIPTION = (
    'Print the digest of an API key as the config takes it (key = "sha256:…"), so that the '
    "config file holds no usable secret. The key is read from standard input (one line) unless "
    "given as an argument; an argument stays in the shell history and the process list."
)


def _read_key(stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass("API key: ")
    text = stdin.read()
    key = text.removesuffix("\n").removesuffix("\r")
    if "\n" in key:
        raise ValueError("standard input holds more than one line; give one key")
    return key


def hash_key(key: str | None, fail: Callable[[str], NoReturn], stdin: TextIO | None = None) -> int:
    """Print the digest of ``key`` (None: read from ``stdin``); ``fail`` reports a bad key (exit 2)."""
    try:
        key = key if key is not None else _read_key(stdin or sys.stdin)
    except ValueError as error:
        fail(str(error))
    problem = key_problem(key)
    if problem is not None:
        fail(problem)
    print(written_digest(key))
    return 0
