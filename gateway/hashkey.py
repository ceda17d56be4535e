"""``grpc-gateway hash-key``: prints an API key's ``sha256:<hex>`` digest, for ``key =`` in the config."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

from gateway.config.keys import key_problem, written_digest

PROG = "grpc-gateway hash-key"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            'Print the digest of an API key as the config takes it (key = "sha256:…"), so that the '
            "config file holds no usable secret. The key is read from standard input (one line) unless "
            "given as an argument; an argument stays in the shell history and the process list."
        ),
    )
    parser.add_argument("key", nargs="?", help="the key (default: read from standard input)")
    return parser


def _read_key(stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass("API key: ")
    text = stdin.read()
    key = text.removesuffix("\n").removesuffix("\r")
    if "\n" in key:
        raise ValueError("standard input holds more than one line; give one key")
    return key


def main(argv: list[str], stdin: TextIO | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        key = args.key if args.key is not None else _read_key(stdin or sys.stdin)
    except ValueError as error:
        parser.error(str(error))
    problem = key_problem(key)
    if problem is not None:
        parser.error(problem)
    print(written_digest(key))
    return 0
