"""The command line as operators use it: the config required, --version, --check, log levels; and
operations settings that are wrong stop the gateway before it listens, saying what to fix."""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from gateway.config.schema import REFERENCE_CONFIG
from tests.gateway.ops_support import USERS, route, toml, write

pytestmark = pytest.mark.engine_neutral


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


def test_the_config_is_required(tmp_path: Path) -> None:
    result = _run("--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "the config is required: -c/--config PATH (the reference config: " in result.stderr
    assert "reference.toml" in result.stderr


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"grpc-gateway {version('shop-grpc-gateway')}"


def test_help_lists_hash_key_as_a_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "hash-key" in result.stdout
    assert "print the sha256: digest of an API key" in result.stdout


def test_check_prints_what_the_reference_config_serves() -> None:
    result = _run("-c", str(REFERENCE_CONFIG), "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"config {REFERENCE_CONFIG}: ok"
    assert "  gRPC      127.0.0.1:50050 (plaintext, engine native)" in lines
    assert f"  {USERS} -> 127.0.0.1:50051 (2 methods)" in lines
    assert any(line.startswith("  per-user: 5/30 seconds per field:user_id") for line in lines), lines
    assert "chain: metadata -> auth -> route -> rate_limit" in lines
    assert "secret-key" not in result.stdout + result.stderr


def test_check_names_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        toml(route(USERS, "127.0.0.1:1", extra='colour = "blue"'), top='listen = "nowhere"\nengine = "fast"'),
    )
    result = _run("--config", str(config), "--check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"grpc-gateway: config {config}: 3 problem(s)"
    assert lines[1].startswith("  listen: ")
    assert lines[2].startswith("  engine: Input should be 'native' or 'aio'")
    assert lines[3] == "  routes[0].colour: unknown field"
    assert result.stdout == ""


def test_check_of_a_missing_descriptor_set(tmp_path: Path) -> None:
    config = write(tmp_path, toml(route(USERS, "127.0.0.1:1"), top='descriptor_sets = ["absent.binpb"]'))
    result = _run("--config", str(config), "--check")
    assert result.returncode == 2
    assert (
        f"  descriptor_sets[0]: cannot read {tmp_path / 'absent.binpb'} (No such file or directory)"
        in result.stderr.splitlines()
    )


def test_check_never_shows_a_redis_password(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        toml(
            route(USERS, "127.0.0.1:1"), tail='[rate_limit]\nstorage = "redis://:hunter2-secret@127.0.0.1:1"'
        ),
    )
    result = _run("--config", str(config), "--check")
    assert result.returncode == 0, result.stderr
    assert "rate limits (storage redis://:***@127.0.0.1:1):" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize("level", ["info", "Warning", "DEBUG"])
def test_log_levels_in_any_case(level: str, tmp_path: Path) -> None:
    result = _run("--config", str(REFERENCE_CONFIG), "--check", "--log-level", level)
    assert result.returncode == 0, result.stderr
