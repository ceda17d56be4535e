"""``make run``: the two services and the gateway with the reference config, in the foreground.

Ctrl-C (or SIGTERM) stops all three gracefully; if any of them exits, the others are stopped too.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

import grpc

from runtime.serving import stop_signal_flag

SERVICES = (("services.users", "127.0.0.1:50051"), ("services.recommendations", "127.0.0.1:50052"))
STARTUP_SECONDS = 15.0


def _start(module: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module, *args])


def _wait_ready(address: str, process: subprocess.Popen[bytes]) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=STARTUP_SECONDS)
        except grpc.FutureTimeoutError:
            return False
    return process.poll() is None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="the gateway's config (make run: the reference config)"
    )
    args = parser.parse_args(argv)

    stopping = stop_signal_flag()

    processes = []
    for module, address in SERVICES:
        process = _start(module, "--listen", address)
        processes.append(process)
        if not _wait_ready(address, process):
            print(f"devstack: {module} did not start on {address}", file=sys.stderr)
            stopping.set()
            break
    if not stopping.is_set():
        processes.append(_start("gateway", "--config", args.config))

    while not stopping.is_set() and all(process.poll() is None for process in processes):
        time.sleep(0.2)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = [process.wait() for process in processes]
    if stopping.is_set():
        # Stopped as asked (Ctrl-C reaches every process of the terminal's group): one that died of
        # that signal before it had set up its own handling stopped too.
        codes = [0 if code in (-signal.SIGINT, -signal.SIGTERM) else code for code in codes]
    return max((1 if code < 0 else code for code in codes), default=0)


if __name__ == "__main__":
    sys.exit(main())
