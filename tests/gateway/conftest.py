"""Fixtures: the real services and gateways as processes on free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.support.processes import free_port, running


@dataclass(frozen=True)
class Services:
    users: str
    recommendations: str

    @property
    def routes(self) -> dict[str, str]:
        return {USERS: self.users, RECOMMENDATIONS: self.recommendations}


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The user and recommendation services, once for the whole run (they keep no state)."""
    users_port, recommendations_port = free_port(), free_port()
    with (
        running(["-m", "services.users", "--listen", f"127.0.0.1:{users_port}"], users_port),
        running(
            ["-m", "services.recommendations", "--listen", f"127.0.0.1:{recommendations_port}"],
            recommendations_port,
        ),
    ):
        yield Services(f"127.0.0.1:{users_port}", f"127.0.0.1:{recommendations_port}")


@contextlib.contextmanager
def start_gateway(config: Path, *args: str) -> Iterator[str]:
    """Run ``python -m gateway --config config ARGS`` on a free port; yield its address."""
    port = free_port()
    with running(["-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}", *args], port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def gateway(services: Services, tmp_path: Path) -> Iterator[str]:
    """A fresh gateway (fresh budgets) with the reference routes and rule."""
    with start_gateway(write_config(tmp_path, gateway_toml(services.routes))) as address:
        yield address
