"""The dated results files of a bench run: their names, the command line, the Markdown document."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import results

STARTED = time.struct_time((2026, 3, 7, 9, 5, 42, 5, 66, 0))

SUMMARY = {
    "started": "2026-03-07T09:05:42+0000",
    "elapsed_seconds": 271.4,
    "environment": {
        "cpu_model": "AMD EPYC",
        "cpus": 2,
        "kernel": "6.1.0",
        "python": "3.11.7",
        "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
        "envoy": "1.40.0 (9e55809, Clean, RELEASE, BoringSSL)",
        "nginx": None,
        "h2load": "h2load nghttp2/1.52.0",
        "git_commit": "abc1234",
        "git_uncommitted": [" M gateway/app.py"],
        "placement": {"h2load_and_service_cpu": 0, "yardstick_and_gateways_cpu": 1},
        "server_environment": {"GRPC_EXPERIMENTS": "-event_engine_client"},
    },
}


def test_stem_is_the_start_to_the_minute() -> None:
    assert results.stem(STARTED) == "2026-03-07-0905"


def test_stem_of_a_second_run_in_the_same_minute_takes_a_number() -> None:
    assert results.stem(STARTED, ["2026-03-07-0905"]) == "2026-03-07-0905-2"
    assert results.stem(STARTED, ["2026-03-07-0905", "2026-03-07-0905-2"]) == "2026-03-07-0905-3"
    assert results.stem(STARTED, ["2026-03-07-0904", "latest"]) == "2026-03-07-0905"


def test_command_under_make_is_make_bench() -> None:
    assert results.command([], {"MAKELEVEL": "1"}) == "make bench"
    assert results.command(["--quick"], {"MAKELEVEL": "1"}) == "make bench BENCH_ARGS=--quick"
    assert (
        results.command(["--rounds", "2", "--only", "unary"], {"MAKELEVEL": "1"})
        == "make bench BENCH_ARGS='--rounds 2 --only unary'"
    )


def test_command_outside_make_is_python_m_bench() -> None:
    assert results.command([], {}) == "python -m bench"
    assert results.command(["--grpc-experiments", ""], {}) == "python -m bench --grpc-experiments ''"


def test_markdown_has_the_command_the_machine_and_the_report() -> None:
    document = results.markdown(
        run_command="make bench",
        results=SUMMARY,
        report="| path | req/s |\n|---|---:|\n| Envoy | 3000 |",
        notes=["chain with an API key   15.43 µs CPU per call"],
    )
    lines = document.splitlines()
    assert lines[0] == "# Bench run of 2026-03-07 09:05"
    assert "`make bench`" in lines
    assert any(
        line.startswith(
            "271 s; commit `abc1234`, 1 uncommitted files under gateway/, runtime/, services/; "
            "h2load and the service on CPU 0"
        )
        for line in lines
    )
    for row in (
        "| CPU | AMD EPYC |",
        "| cores | 2 |",
        "| kernel | 6.1.0 |",
        "| Python | 3.11.7 |",
        "| rustc | rustc 1.95.0 (59807616e 2026-04-14) |",
        "| Envoy | 1.40.0 (9e55809, Clean, RELEASE, BoringSSL) |",
        # Not installed: the bench ran without it.
        "| nginx | - |",
        "| h2load | h2load nghttp2/1.52.0 |",
        "| Envoy | 3000 |",
    ):
        assert row in lines
    assert lines[-3:] == ["```text", "chain with an API key   15.43 µs CPU per call", "```"]
    assert document.endswith("\n")


def test_markdown_of_an_unpinned_run_says_so() -> None:
    unpinned = {**SUMMARY, "environment": {**SUMMARY["environment"], "placement": {}}}  # type: ignore[dict-item]
    document = results.markdown(run_command="python -m bench --no-pin", results=unpinned, report="")
    assert "not pinned to CPUs" in document
    assert "```" not in document


def test_write_makes_a_dated_pair_and_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    data, document = results.write(folder, STARTED, {"runs": [1, 2]}, "# report\n")
    assert (data.name, document.name) == ("2026-03-07-0905.json", "2026-03-07-0905.md")
    assert json.loads(data.read_text()) == {"runs": [1, 2]}
    assert document.read_text() == "# report\n"
    again, again_document = results.write(folder, STARTED, {"runs": []}, "# again\n")
    assert (again.name, again_document.name) == ("2026-03-07-0905-2.json", "2026-03-07-0905-2.md")
    assert json.loads(data.read_text()) == {"runs": [1, 2]}
