"""The engine of the gateways the tests start: ``--gateway-engine aio`` runs them on grpc.aio."""

from __future__ import annotations

import pytest

from tests.support.processes import use_gateway_engine


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gateway-engine",
        choices=["core", "aio"],
        default=None,
        help="start every gateway with this engine (default: the config's, core)",
    )


def pytest_configure(config: pytest.Config) -> None:
    use_gateway_engine(config.getoption("--gateway-engine"))
