"""The README's bench table: the newest committed run's, as ``make bench`` writes it (bench/results.py)."""

from __future__ import annotations

import json

import pytest

from bench.results import README, latest, readme_block, readme_part, with_readme_block

pytestmark = pytest.mark.engine_neutral


def test_the_readme_shows_the_newest_committed_run() -> None:
    newest = latest(suffix=".json")
    assert newest is not None
    assert (newest.parent / f"{newest.stem}.md").exists()
    expected = readme_block(json.loads(newest.read_text()), newest.stem)
    assert readme_part(README.read_text()) == expected, (
        f"README.md's bench table is not {newest.name}'s: run make bench and commit its results with "
        "the README it rewrites"
    )


def test_the_table_has_the_anchors_and_the_targets() -> None:
    shown = readme_part(README.read_text())
    for row in ("| nginx", "| Envoy", "| **this gateway**, native engine", "| this gateway, aio engine"):
        assert row in shown
    assert "÷ Envoy CPU/call | " in shown
    assert "| ≤ 0.80 |" in shown


def test_a_readme_without_the_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="no part between"):
        with_readme_block("# A README\n", "table")
