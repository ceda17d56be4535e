"""The results files of a run: ``YYYY-MM-DD-HHMM.json`` (the raw numbers, as ``latest.json``) and
``YYYY-MM-DD-HHMM.md`` (the command, the machine and the report as Markdown tables).

They are named after the run's start, in local time, so that a folder of them sorts by date; the ones
worth keeping are added to git by hand (``latest.json`` is git-ignored, the dated files are not).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STAMP = "%Y-%m-%d-%H%M"
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
