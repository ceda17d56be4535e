"""What observing a call costs, in-process: ``python -m bench.observe_cost [--calls N]``.

Runs a forwarded GetUser call's observer as a door does (``start``, ``forwarding``, ``ended``) for
``--calls`` calls with the metrics of ``--metrics-listen`` on, and tracing off, on (every call
sampled), and on with ``sample_ratio = 0``; prints CPU microseconds per call for each. The trace
collector is an address nothing listens on: spans are made and dropped as they would be sent, so
the figure is the CPU of the thread the calls are observed on, the call path's share; the exporter's
thread is not counted. The calls carry a sampled ``traceparent`` except with ``sample_ratio = 0``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.call.lifecycle import upstream_metadata
from gateway.call.requestid import request_id_of
from gateway.call.step import Call
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.config.schema import Tracing
from gateway.ops.accesslog import AccessLog
from gateway.ops.metrics import GatewayMetrics
from gateway.ops.observe import Observability
from gateway.ops.tracing import Tracer
from gateway.plan import load_plan

BENCH = Path(__file__).resolve().parent
METHOD = "/shop.users.v1.UserService/GetUser"
METADATA = (
    ("x-api-key", "secret-key"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_per_call(sample_ratio: float | None, calls: int) -> float:
    metadata = METADATA if sample_ratio != 0 else METADATA[:1]
    metrics = GatewayMetrics()
    tracer = None
    if sample_ratio is not None:
        endpoint = f"127.0.0.1:{_unused_port()}"
        config = Tracing(endpoint=endpoint, sample_ratio=sample_ratio, export_timeout=0.1)
        tracer = Tracer(config, metrics.spans_dropped)
    observed = Observability(metrics, None, AccessLog(AccessLogConfig(enabled=False)), tracer)
    chain = load_plan(BENCH / "gateway.toml", {}, lambda _: observed).chain.of(METHOD)
    observer = chain.observer
    started_cpu = time.thread_time()
    for _ in range(calls):
        started = observer.start()
        call = Call("grpc", METHOD, metadata, lambda: "ipv4:127.0.0.1:5555", request_id_of(metadata))
        call.started = started
        call.first = b"\x08\x65"
        call.client = "bench"
        upstream_metadata(chain, call)
        observer.ended(call, grpc.StatusCode.OK, started)
    cpu = (time.thread_time() - started_cpu) / calls * 1e6
    if tracer is not None:
        tracer.close()
    return cpu


@dataclass(frozen=True)
class ObserveCost:
    """Medians, CPU µs per call."""

    tracing_off: float
    sampled: float
    not_sampled: float

    def lines(self) -> list[str]:
        return [
            f"observing a call, metrics on, tracing off          {self.tracing_off:7.2f} µs CPU per call",
            f"observing a call, tracing on, every call sampled   {self.sampled:7.2f} µs CPU per call",
            f"observing a call, tracing on, sample_ratio 0       {self.not_sampled:7.2f} µs CPU per call",
        ]


def measure(calls: int = 20_000, rounds: int = 5) -> ObserveCost:
    # No collector listens, on purpose: its drops are not news here.
    logging.getLogger("gateway.tracing").setLevel(logging.ERROR)
    cases = (None, 1.0, 0.0)  # off, every call sampled, none
    figures: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):  # interleaved, medians: the machine is noisy
        for values, ratio in zip(figures, cases, strict=True):
            values.append(_cpu_per_call(ratio, calls))
    off, sampled, not_sampled = (sorted(values)[rounds // 2] for values in figures)
    return ObserveCost(off, sampled, not_sampled)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observe_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(measure(args.calls, args.rounds).lines()))


if __name__ == "__main__":
    main()
