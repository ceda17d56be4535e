"""The engine of the gateways the tests start: ``--gateway-engine aio`` runs them on grpc.aio.

Tests marked ``engine_neutral`` check what no engine takes part in (config errors, the HTTP doors,
which call upstreams on their own channels, the chain in-process, the dashboard's queries): with
``--gateway-engine`` they are left out, having run once already.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.processes import use_gateway_engine


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gateway-engine",
        choices=["native", "aio"],
        default=None,
        help="start every gateway with this engine (default: the config's, native)",
    )


def pytest_configure(config: pytest.Config) -> None:
    use_gateway_engine(config.getoption("--gateway-engine"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--gateway-engine") is None:
        return
    neutral = [item for item in items if item.get_closest_marker("engine_neutral") is not None]
    if neutral:
        config.hook.pytest_deselected(items=neutral)
        items[:] = [item for item in items if item.get_closest_marker("engine_neutral") is None]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each skip's reason, appended to the file GATEWAY_TEST_SKIPS names (make test prints them last)."""
    skips = os.environ.get("GATEWAY_TEST_SKIPS")
    if skips and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        with Path(skips).open("a") as file:
            file.write(reason.replace("\n", " ") + "\n")
