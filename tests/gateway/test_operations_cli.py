"""Operations settings that are wrong stop the gateway before it listens, saying what to fix."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.gateway.ops_support import USERS, route, toml, write


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_access_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    config = write(
        tmp_path, toml(route(USERS, "127.0.0.1:1"), tail='[access_log]\ndestination = "no/such/dir/a.log"')
    )
    result = _run("--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"config {config}: access_log.destination: cannot open {tmp_path}/no/such/dir/a.log for appending "
        "(No such file or directory)"
    )


def test_metrics_port_in_use(tmp_path: Path) -> None:
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("--config", str(config), "--listen", "127.0.0.1:0", "--metrics-listen", str(port))
    assert result.returncode == 1
    assert f"grpc-gateway: error: cannot listen on 127.0.0.1:{port} for metrics" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_listen_must_be_an_address() -> None:
    result = _run("--metrics-listen", "everywhere")
    assert result.returncode == 2
    assert "argument --metrics-listen: 'everywhere' is not an address of the form HOST:PORT" in result.stderr
