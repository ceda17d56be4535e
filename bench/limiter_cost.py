"""The rate limiter's own cost per call, in-process: ``python -m bench.limiter_cost [--redis URL]``.

Spends one unit of the reference rule (5/30 s per user_id, moving window) for ``--calls``
distinct users through the same code the gateway runs per call (``RateLimitPolicy.spend``),
and prints wall and CPU microseconds per call for memory storage and, given a URL, Redis.
"""

from __future__ import annotations

import argparse
import time

from gateway.config.schema import REFERENCE_CONFIG, load_config
from gateway.policy.ratelimit.rules import RateLimitPolicy, Subject
from gateway.routing.table import build_routes, load_catalog

METHOD = "/shop.users.v1.UserService/GetUser"


async def _measure(storage: str, calls: int) -> tuple[float, float]:
    config = load_config(REFERENCE_CONFIG)
    limits_config = config.rate_limit.model_copy(update={"storage": storage, "storage_timeout": 1.0})
    routes = build_routes(config, load_catalog(config))
    policy = RateLimitPolicy(limits_config, routes, ["demo"])
    [rule] = policy.rules_for(METHOD)
    subjects = [((rule, Subject(f"user_id={n}", f"user_id {n}")),) for n in range(calls)]
    await policy.spend(subjects[0], "demo")  # connect first
    wall, cpu = time.perf_counter(), time.process_time()
    for subject in subjects:
        await policy.spend(subject, "demo")
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--redis", help="a Redis URL, e.g. redis://127.0.0.1:6379 (its data is left alone)")
    args = parser.parse_args()
    storages = ["memory://", *([args.redis] if args.redis else [])]
    import uvloop

    for storage in storages:
        wall, cpu = uvloop.run(_measure(storage, args.calls))
        print(f"{storage:32} {wall:8.1f} µs wall per call {cpu:8.1f} µs CPU per call (gateway process)")


if __name__ == "__main__":
    main()
