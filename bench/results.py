"""The results files of a run: ``YYYY-MM-DD-HHMM.json`` (the raw numbers, as ``latest.json``) and
``YYYY-MM-DD-HHMM.md`` (the command, the machine and the report as Markdown tables).

They are named after the run's start, in local time, so that a folder of them sorts by date; the ones
worth keeping are added to git by hand (``latest.json`` is git-ignored, the dated files are not).
The README shows the anchors' table of a run (:func:`readme_block`), written there by ``make bench``
and checked against the newest committed run by tests/docs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STAMP = "%Y-%m-%d-%H%M"
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
# A results file is named after its run's start: YYYY-MM-DD-HHMM, with -2, -3... for a same minute.
DATED = re.compile(r"\d{4}-\d{2}-\d{2}-\d{4}(-\d+)?")
# Where the README's table of a run goes, between these two lines.
README_START = "<!-- bench: make bench writes this part from its results; tests/docs checks it -->"
README_END = "<!-- bench: end -->"
# The README's rows: the anchors, then the gateway on each engine (bench/report.py's path names).
README_PATHS = (
    ("nginx", "nginx, `grpc_pass` + key check + `limit_req`"),
    ("envoy", "Envoy, one worker + key route + `local_ratelimit`"),
    ("gateway", "**this gateway**, native engine: key, per-user rule, access log, metrics"),
    ("floor", "its data plane alone: a decider in Python that admits every call (`bench/floor.py`)"),
    ("gateway-aio", "this gateway, aio engine (Python alone)"),
)
# Keys of the environment (see bench/run.py) shown as the machine, and their labels.
MACHINE = (
    ("cpu_model", "CPU"),
    ("cpus", "cores"),
    ("kernel", "kernel"),
    ("python", "Python"),
    ("rustc", "rustc"),
    ("envoy", "Envoy"),
    ("nginx", "nginx"),
    ("h2load", "h2load"),
)


def stem(started: time.struct_time, taken: Sequence[str] = ()) -> str:
    """``YYYY-MM-DD-HHMM`` of ``started``; with ``-2``, ``-3``… when a run of the same minute took it."""
    base = time.strftime(STAMP, started)
    name = base
    number = 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def command(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """How the run was started, as a person would type it again: ``make bench`` (make sets MAKELEVEL
    for what it runs) or ``python -m bench``, with the arguments."""
    if "MAKELEVEL" in environ:
        return "make bench" + (f" BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else "")
    return shlex.join(["python", "-m", "bench", *argv])


def tool_version(args: Sequence[str]) -> str | None:
    """The first line ``args`` print (``rustc --version``, say); None if it cannot run."""
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if result.returncode == 0 and text else None


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(
    *,
    run_command: str,
    results: Mapping[str, Any],
    report: str,
    notes: Sequence[str] = (),
) -> str:
    """The Markdown file: a title, the command, the machine, ``report`` (Markdown tables, see
    :func:`bench.report.markdown`), then ``notes`` (the in-process measures, warnings) as text."""
    environment: Mapping[str, Any] = results.get("environment", {})
    # The ISO time of the JSON, to the minute, as the file's name has it.
    started = str(results.get("started", ""))[:16].replace("T", " ")
    lines = [f"# Bench run of {started}", "", f"`{run_command}`"]
    elapsed = results.get("elapsed_seconds")
    facts = []
    if elapsed is not None:
        facts.append(f"{elapsed:.0f} s")
    commit = environment.get("git_commit")
    if commit:
        changed = environment.get("git_uncommitted") or ()
        uncommitted = (
            f", {len(changed)} uncommitted files under gateway/, runtime/, services/" if changed else ""
        )
        facts.append(f"commit `{commit}`{uncommitted}")
    placement = environment.get("placement", {})
    if placement.get("yardstick_and_gateways_cpu") is not None:
        facts.append(
            f"h2load and the service on CPU {placement.get('h2load_and_service_cpu')}, "
            f"every forwarder on CPU {placement.get('yardstick_and_gateways_cpu')}"
        )
    else:
        facts.append("not pinned to CPUs")
    experiments = environment.get("server_environment", {}).get("GRPC_EXPERIMENTS")
    facts.append(f"GRPC_EXPERIMENTS={experiments or '(unset)'}")
    lines += ["", "; ".join(facts) + ".", "", "| machine | |", "|---|---|"]
    lines += [f"| {label} | {_cell(environment.get(key))} |" for key, label in MACHINE]
    lines += ["", report]
    if notes:
        lines += ["", "```text", *notes, "```"]
    return "\n".join(lines) + "\n"


def write(
    folder: Path, started: time.struct_time, results: Mapping[str, Any], text: str
) -> tuple[Path, Path]:
    """Write ``results`` (JSON) and ``text`` (Markdown) as a dated pair in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = {path.stem for path in folder.glob("*.json")} | {path.stem for path in folder.glob("*.md")}
    name = stem(started, sorted(taken))
    data = folder / f"{name}.json"
    document = folder / f"{name}.md"
    data.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    document.write_text(text)
    return data, document


def latest(folder: Path = RESULTS, suffix: str = ".md") -> Path | None:
    """The newest dated results file (``.md`` or ``.json``) git tracks in ``folder`` (any, outside a
    git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", "."], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [path.name for path in folder.glob(f"*{suffix}")]
    dated = [name for name in listed if name.endswith(suffix) and DATED.fullmatch(name.removesuffix(suffix))]
    return folder / max(dated, key=lambda name: _run_order(name.removesuffix(suffix))) if dated else None


def _run_order(stem: str) -> tuple[str, int]:
    """Date first, then the -2, -3... of runs started in the same minute."""
    number = stem[len("YYYY-MM-DD-HHMM") :].lstrip("-")
    return stem[: len("YYYY-MM-DD-HHMM")], int(number) if number else 1


def readme_block(results: Mapping[str, Any], name: str) -> str:
    """The README's part of the run whose results (the JSON) are ``results``, filed as ``name``
    (without suffix): each anchor's and engine's CPU per unary call and p99, and the comparisons with
    the anchors, with their targets."""
    environment: Mapping[str, Any] = results.get("environment", {})
    summary: Mapping[str, Any] = results.get("summary", {})
    unary: Mapping[str, Any] = summary.get("unary", {})
    lines = [
        README_START,
        f"From [`bench/results/{name}.md`](bench/results/{name}.md): "
        f"`{results.get('command', 'make bench')}` on {environment.get('cpus', '?')} cores "
        f"({environment.get('cpu_model', '?')}), a unary `GetUser` "
        "through each proxy to the same service, medians of the rounds.",
        "",
        "| proxy | CPU µs per call | p99 ms |",
        "|---|---:|---:|",
    ]
    for path, label in README_PATHS:
        stats = unary.get(path)
        if not stats or stats.get("proxy_cpu_us") is None:
            continue
        cpu, p99 = stats["proxy_cpu_us"]["median"], stats["p99_us"]["median"] / 1000
        lines.append(f"| {label} | {cpu:.0f} | {p99:.1f} |")
    lines += ["", "| comparison | value | target | |", "|---|---:|---:|---|"]
    for comparison in summary.get("comparisons", ()):
        value = comparison.get("value")
        if not comparison.get("target") or value is None:
            continue
        meets = {True: "met", False: "**not met**"}.get(comparison.get("meets"), "")
        unit = "x" if comparison.get("unit") == "x" else f" {comparison.get('unit')}"
        figure = f"{value['median']:.2f}{unit}"
        lines.append(f"| {_cell(comparison['name'])} | {figure} | {comparison['target']} | {meets} |")
    lines.append(README_END)
    return "\n".join(lines)


def with_readme_block(readme: str, block: str) -> str:
    """``readme`` with its part between :data:`README_START` and :data:`README_END` replaced by ``block``.

    Raises:
        ValueError: the README has no such part.
    """
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no part between {README_START!r} and {README_END!r}")
    return readme[:start] + block + readme[end + len(README_END) :]


def readme_part(readme: str) -> str:
    """The README's part that :func:`readme_block` writes, markers included ("" if it has none)."""
    start, end = readme.find(README_START), readme.find(README_END)
    return readme[start : end + len(README_END)] if 0 <= start < end else ""
