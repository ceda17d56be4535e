"""System programs some tests need (redis-server, chromium, node): found, or the test skips naming the
Debian package, unless CI is set, where a missing program fails the test (.ci/run installs them)."""

from __future__ import annotations

import os
import shutil

import pytest


def required_program(name: str, package: str) -> str:
    """The path of program ``name``; skips the test (fails it in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                f"{name} is not installed: CI must install it (apt-get install {package}; .ci/run does)"
            )
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path
