"""The call chain's own cost per call, in-process: ``python -m bench.step_cost [--calls N]``.

Builds the plans of bench/gateway.toml and bench/gateway-step.toml (the same with one user step,
examples/tenants.py) and runs a GetUser call's chain as a door does (a new Call, the first request
set, ``decide``) for ``--calls`` calls; prints CPU microseconds per call for each and the step's
share. No servers: what the chain costs, apart from grpc.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shop.users.v1 import users_pb2

from gateway.call.requestid import request_id_of
from gateway.call.step import Call
from gateway.config.schema import AccessLog as AccessLogConfig
from gateway.ops.accesslog import AccessLog
from gateway.ops.observe import Observability
from gateway.plan import load_plan

BENCH = Path(__file__).resolve().parent
METHOD = "/shop.users.v1.UserService/GetUser"
METADATA = (("x-api-key", "secret-key"), ("x-tenant", "acme"), ("user-agent", "grpc-python/1.85"))


def _cpu_per_call(config: Path, calls: int) -> float:
    quiet = Observability(None, None, AccessLog(AccessLogConfig(enabled=False)))
    chain = load_plan(config, {}, lambda _: quiet).chain.of(METHOD)
    bodies = [users_pb2.GetUserRequest(user_id=1 + n % 1000).SerializeToString() for n in range(calls)]
    request_type = chain.request_type
    started = time.process_time()
    for body in bodies:
        call = Call(
            "grpc", METHOD, METADATA, lambda: "ipv4:127.0.0.1:5555", request_id_of(METADATA), request_type
        )
        call.first = body
        if chain.decide(call) is not None:
            raise RuntimeError(f"the bench's chain refused a call: {chain.decide(call)}")
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.step_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    without, with_step = [], []
    for _ in range(args.rounds):  # interleaved, medians: the machine is noisy
        without.append(_cpu_per_call(BENCH / "gateway.toml", args.calls))
        with_step.append(_cpu_per_call(BENCH / "gateway-step.toml", args.calls))
    without.sort()
    with_step.sort()
    middle = args.rounds // 2
    print(
        f"chain of bench/gateway.toml        {without[middle]:6.2f} µs CPU per call (median of {args.rounds})"
    )
    print(f"chain of bench/gateway-step.toml   {with_step[middle]:6.2f} µs CPU per call")
    print(f"the user step                      {with_step[middle] - without[middle]:6.2f} µs CPU per call")


if __name__ == "__main__":
    main()
