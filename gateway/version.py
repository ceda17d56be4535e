"""The gateway's version: the one in pyproject.toml, as the installed package's metadata gives it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("shop-grpc-gateway")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
