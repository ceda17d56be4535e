"""The Performance page's results (docs/hooks/bench_results.py): the newest committed run, whole."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.results import RESULTS, latest
from docs.hooks.bench_results import MARKER, results_markdown

pytestmark = pytest.mark.engine_neutral

PAGE = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def test_the_page_shows_the_newest_committed_run() -> None:
    assert MARKER in PAGE.read_text()
    committed = subprocess.run(
        ["git", "ls-files", "--", "*.md"], cwd=RESULTS, capture_output=True, text=True, check=True
    ).stdout.split()
    newest = latest()
    assert newest is not None
    assert newest.name in committed
    assert all(name[: len("YYYY-MM-DD-HHMM")] <= newest.name for name in committed)
    shown = results_markdown()
    assert shown.startswith(f"From `bench/results/{newest.name}`")
    # The run's own title goes under the page's headings; its tables come whole.
    assert "\n# " not in shown
    assert all(line in shown for line in newest.read_text().splitlines() if line.startswith("|"))


def test_runs_of_one_minute_are_taken_in_order(tmp_path: Path) -> None:
    for name in ("2026-01-02-0900.md", "2026-01-02-0900-2.md", "2026-01-01-2359.md", "notes.md"):
        (tmp_path / name).write_text(f"# Bench run {name}\n")
    newest = latest(tmp_path)  # not a git checkout: every dated file counts
    assert newest == tmp_path / "2026-01-02-0900-2.md"


def test_no_results_yet(tmp_path: Path) -> None:
    assert latest(tmp_path) is None
    assert "make bench" in results_markdown(tmp_path)
