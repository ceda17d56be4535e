"""The latest committed bench run, shown on the Performance page each time the site is built.

``make bench`` writes a dated pair of files to ``bench/results/`` (``bench/results.py``); the ones
worth keeping are committed. ``docs/performance.md`` holds :data:`MARKER`, and this mkdocs hook puts
the newest committed Markdown file in its place, so that no figure on the site is typed by hand.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

MARKER = "<!-- bench-results -->"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
# A results file is named after its run's start: YYYY-MM-DD-HHMM.md, with -2, -3... for a same minute.
DATED = re.compile(r"\d{4}-\d{2}-\d{2}-\d{4}(-\d+)?\.md")


def latest(folder: Path = RESULTS) -> Path | None:
    """The newest dated results file git tracks in ``folder`` (any, outside a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", "."], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [path.name for path in folder.glob("*.md")]
    dated = [name for name in listed if DATED.fullmatch(name)]
    return folder / max(dated, key=_run_order) if dated else None


def results_markdown(folder: Path = RESULTS) -> str:
    """The latest results file as a part of a page: its title a third-level heading, its name said."""
    path = latest(folder)
    if path is None:
        return "No bench results are committed yet: run `make bench` and add the dated files it writes."
    text = path.read_text()
    # The file's own title ("# Bench run of ...") and any heading in it go under the page's headings.
    text = re.sub(
        r"^(#{1,4}) ", lambda match: "#" * (len(match.group(1)) + 2) + " ", text, flags=re.MULTILINE
    )
    return f"From `bench/results/{path.name}`:\n\n{text}"


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """mkdocs hook: the latest results in place of :data:`MARKER`."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, results_markdown())


def _run_order(name: str) -> tuple[str, int]:
    """Date first, then the -2, -3... of runs started in the same minute."""
    stem = name.removesuffix(".md")
    number = stem[len("YYYY-MM-DD-HHMM") :].lstrip("-")
    return stem[: len("YYYY-MM-DD-HHMM")], int(number) if number else 1
