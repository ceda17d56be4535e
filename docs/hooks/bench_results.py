"""The latest committed bench run, shown on the Performance page each time the site is built.

``make bench`` writes a dated pair of files to ``bench/results/`` (``bench/results.py``); the ones
worth keeping are committed. ``docs/performance.md`` holds :data:`MARKER`, and this mkdocs hook puts
the newest committed Markdown file in its place, so that no figure on the site is typed by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

from bench.results import RESULTS, latest

MARKER = "<!-- bench-results -->"


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
