"""The fenced code blocks of a docs page, and what the page marks them for.

A page marks a block for its tests with an HTML comment on the line before it, which neither GitHub
nor the site shows:

- ``<!-- test: run -->`` before an ``sh`` block: a script to run, which must succeed;
- ``<!-- test: serve HOST:PORT -->`` before an ``sh`` block: servers started in the background
  (``COMMAND &``), the last one serving gRPC health at HOST:PORT, and ``NAME=$!`` naming its pid;
- ``<!-- test: output -->`` before a ``console`` block: ``$ command`` lines, each followed by what it
  prints; ``<!-- test: output, wait -->`` when the output takes a moment to become that (a reload).

A block with ``title="PATH"`` (mkdocs-material shows it as the block's title) is a file the reader
writes at PATH.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<attributes>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*test:\s*(?P<marker>.*?)\s*-->\s*\n\s*\Z")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text, its title (a file's path) and its test marker."""

    lang: str
    text: str
    title: str | None
    marker: str | None


@dataclass(frozen=True)
class Command:
    """One ``$ command`` of a console block and the lines it prints."""

    command: str
    output: str


def blocks(page: str) -> list[Block]:
    """Every fenced code block of ``page``, in order."""
    found = []
    for fence in _FENCE.finditer(page):
        before = page[: fence.start()]
        marker = _MARKER.search(before[-200:])
        title = _TITLE.search(fence["attributes"])
        found.append(
            Block(
                lang=fence["lang"],
                text=fence["body"],
                title=title["title"] if title else None,
                marker=marker["marker"] if marker else None,
            )
        )
    return found


def commands(console: str) -> list[Command]:
    """The commands of a console block, each with the output shown after it."""
    found: list[Command] = []
    command: str | None = None
    output: list[str] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            if command is not None:
                found.append(Command(command, "\n".join(output)))
            command, output = line[2:], []
        elif command is not None:
            output.append(line)
    if command is not None:
        found.append(Command(command, "\n".join(output)))
    return found
