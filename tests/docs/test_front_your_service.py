"""docs/front-your-service.md, done as its reader would do it: every block the page marks (tests/docs/
blocks.py), in order, in an empty folder, against real processes.

The page's own addresses (127.0.0.1:50060 and the like) become free loopback ports in everything the
test writes and runs, and back again in what it reads, so that the replies are compared with the page
as it is written. What differs from run to run is set aside: request ids, and the seconds a refusal
says to wait.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.blocks import Block, blocks, commands
from tests.support.processes import free_port, running
from tests.support.programs import required_program

pytestmark = pytest.mark.engine_neutral

PAGE = Path(__file__).resolve().parents[2] / "docs" / "front-your-service.md"
# The project's environment, active for the reader: python, grpc-gateway and grpcurl are its own.
BIN = Path(sys.executable).parent
COMMAND_SECONDS = 30.0
WAIT_SECONDS = 10.0
ADDRESS = re.compile(r"127\.0\.0\.1:\d+")
VOLATILE = (
    (re.compile(r"x-request-id: [0-9a-f]{32}"), "x-request-id: <id>"),
    # The seconds to wait: 60 right after the minute's first call, 59 a second later.
    (re.compile(r"(retry in |retry-after: |x-ratelimit-reset: |etry_?[dD]elay\": ?\")\d+"), r"\1<n>"),
    (re.compile(r"content-length: \d+"), "content-length: <n>"),
)


class Reader:
    """Does what the page says, in a folder of its own, with the page's addresses made free ports."""

    def __init__(self, folder: Path, addresses: set[str], servers: contextlib.ExitStack) -> None:
        self.folder = folder
        self.ports = {address: f"127.0.0.1:{free_port()}" for address in sorted(addresses)}
        self.servers = servers
        self.environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def follow(self, block: Block) -> None:
        if block.title is not None:
            path = self.folder / block.title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.local(block.text))
        if block.marker == "run":
            self.run(block.text)
        elif block.marker is not None and block.marker.startswith("serve "):
            self.serve(block.text, block.marker.removeprefix("serve "))
        elif block.marker in ("output", "output, wait"):
            for command in commands(block.text):
                self.check(command.command, command.output, wait=block.marker == "output, wait")

    def run(self, script: str) -> None:
        """Run ``script``, which must succeed."""
        done = self.shell(script)
        assert done.returncode == 0, f"{script!r} failed ({done.returncode}):\n{done.stdout}"

    def shell(self, script: str) -> subprocess.CompletedProcess[str]:
        """``script`` run by bash in the reader's folder; what it printed, as a terminal shows it."""
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.local(script)],
            cwd=self.folder,
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )

    def serve(self, script: str, address: str) -> None:
        """Start each ``COMMAND &`` as the reader's shell would, and wait until the last serves."""
        started: subprocess.Popen[str] | None = None
        for line in script.splitlines():
            if line.rstrip().endswith("&"):
                program, *words = shlex.split(self.local(line.rstrip().removesuffix("&")))
                # running() starts python: a script of the environment (grpc-gateway) is its argument.
                args = words if program == "python" else [str(shutil.which(program, path=BIN)), *words]
                port = int(self.local(address).rpartition(":")[2])
                started = self.servers.enter_context(running(args, port))
            elif (bound := re.fullmatch(r"(\w+)=\$!", line.strip())) is not None:
                assert started is not None, f"{line!r} names no server started before it"
                self.environ[bound[1]] = str(started.pid)
        assert started is not None, f"no server in {script!r}"

    def check(self, command: str, shown: str, *, wait: bool) -> None:
        deadline = time.monotonic() + (WAIT_SECONDS if wait else 0)
        while True:
            printed = self.seen(self.shell(command).stdout)
            if printed == self.seen(shown) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert printed == self.seen(shown), f"$ {command}"

    def local(self, text: str) -> str:
        """``text`` with the page's addresses made this run's."""
        return ADDRESS.sub(lambda match: self.ports.get(match[0], match[0]), text)

    def seen(self, text: str) -> str:
        """``text`` as the page would show it: its addresses, the volatile parts set aside."""
        for page, local in self.ports.items():
            text = text.replace(local, page)
        for pattern, replacement in VOLATILE:
            text = pattern.sub(replacement, text)
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@pytest.mark.timeout(120)
def test_the_page_does_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    required_program("curl", "curl")  # the page's HTTP calls, as a reader types them
    page = PAGE.read_text()
    marked = blocks(page)
    shown = "\n".join(block.text for block in marked if block.marker is not None)
    # What the page is for: a routed service answering on both doors, and a refusal by its rule.
    for reply in ('"quantity": 12', "429 Too Many Requests", "Code: ResourceExhausted", "kill -HUP"):
        assert reply in shown, f"the page no longer shows (and tests) {reply!r}"
    # The servers are started as the reader starts them, from the reader's folder.
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as servers:
        reader = Reader(tmp_path, set(ADDRESS.findall(page)), servers)
        for block in marked:
            reader.follow(block)
