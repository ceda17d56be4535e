"""The command line both demo services share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.addresses import parse_host_port

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Options:
    """What the command line asked for; ``data`` is None for the shipped reference data."""

    listen: str
    data: Path | None
    grace: float
    log_level: str


def _address(text: str) -> str:
    try:
        parse_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _grace(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    # Written so that nan fails too.
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds >= 0")
    return seconds


def parse_args(prog: str, description: str, default_listen: str, argv: Sequence[str] | None) -> Options:
    """Parse ``argv`` (``sys.argv[1:]`` when None); exits with status 2 and a usage message on errors."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_address,
        default=default_listen,
        help=f"address to serve on (default: {default_listen})",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        type=Path,
        help="JSON data set to serve (default: the reference data shipped with the package)",
    )
    parser.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_grace,
        default=10.0,
        help="on SIGTERM/SIGINT, how long calls in flight may still run (default: 10)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.upper,
        default="INFO",
        help="least severe level written to the JSON log on stderr (default: INFO)",
    )
    args = parser.parse_args(argv)
    return Options(listen=args.listen, data=args.data, grace=args.grace, log_level=args.log_level)
