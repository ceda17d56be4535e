"""``grpc-gateway``: the command line, its subcommand (``hash-key``), ``--check`` and its exit codes.

0: stopped by a signal; 1: could not listen, or a worker failed; 2: a bad config or command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config.schema import REFERENCE_CONFIG, ConfigError
from gateway.hashkey import HASH_KEY_DESCRIPTION, hash_key
from gateway.version import VERSION
from runtime import jsonlog
from runtime.addresses import format_host_port, parse_host_port

EXIT_CONFIG_ERROR = 2

# grpc.aio (the aio engine, the HTTP doors' upstream channels, the gateway's own services) does its
# network I/O on the threads that poll its completion queues instead of its event engine: less CPU
# per call (`make bench BENCH_ARGS="--grpc-experiments ''"` shows grpc's default beside it). Set
# before grpc is imported; an operator's own value wins.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"


def _address(text: str) -> str:
    try:
        parse_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpc-gateway",
        description="A gRPC gateway: API-key and JWT auth, exact per-user rate limits, transparent "
        "forwarding of every kind of call, an HTTP/JSON and gRPC-Web door.",
        epilog=f"To try it: grpc-gateway -c {REFERENCE_CONFIG} (the reference config; make run uses it).",
    )
    parser.add_argument("--version", action="version", version=f"grpc-gateway {VERSION}")
    parser.add_argument("-c", "--config", type=Path, metavar="PATH", help="the TOML config file (required)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="load the config (descriptor sets, key files, JWKS caches, steps) as a start would, print "
        "what it would serve and exit: 0 if it is good, 2 with every problem found",
    )
    parser.add_argument("--listen", type=_address, help="HOST:PORT to listen on, overriding the config")
    parser.add_argument(
        "--http-listen", type=_address, help="HOST:PORT of the HTTP/JSON door, overriding [http] listen"
    )
    parser.add_argument(
        "--engine",
        choices=["native", "aio"],
        help="what carries the calls, overriding the config's engine",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="in any case (default: info)"
    )
    parser.add_argument(
        "--metrics-listen",
        type=_metrics_address,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT: 127.0.0.1); "
        "overrides metrics_listen; with --workers N, worker n serves PORT+n",
    )
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="processes serving one port (SO_REUSEPORT); more than 1 needs a shared rate-limit storage",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the listen port with other processes (set by --workers)",
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    hash_key_command = commands.add_parser(
        "hash-key",
        help="print the sha256: digest of an API key, for key = in the config",
        description=HASH_KEY_DESCRIPTION,
    )
    hash_key_command.add_argument("key", nargs="?", help="the key (default: read from standard input)")
    hash_key_command.set_defaults(fail=hash_key_command.error)
    return parser


def _metrics_address(text: str) -> str:
    from gateway.ops.metrics import metrics_address

    try:
        return metrics_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        return hash_key(args.key, args.fail)
    if args.config is None:
        parser.error(f"the config is required: -c/--config PATH (the reference config: {REFERENCE_CONFIG})")
    overrides = {
        name: value
        for name, value in (
            ("listen", args.listen),
            ("metrics_listen", args.metrics_listen),
            ("engine", args.engine),
            ("http_listen", args.http_listen),
        )
        if value is not None
    }
    jsonlog.configure(args.log_level)
    if args.check:
        from gateway.check import check

        return check(args.config, overrides, sys.stdout, sys.stderr)
    # grpc is imported from here on, after GRPC_EXPERIMENTS is set.
    from gateway.app import serve
    from gateway.ops.observe import load_observability
    from gateway.ops.workers import check_workers, supervise
    from gateway.plan import Plan, load_plan
    from runtime.serving import BindError, run

    try:
        plan = load_plan(args.config, overrides, load_observability)
        if args.workers > 1:
            check_workers(plan.config, args.workers)
    except ConfigError as error:
        print(f"grpc-gateway: error: config {args.config}: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    observability = plan.observability

    def reload(previous: Plan) -> Plan:
        return load_plan(args.config, overrides, lambda config: observability, previous)

    try:
        if args.workers > 1:
            observability.access_log.close()  # the workers write it
            return supervise(
                args.workers,
                plan.config.listen,
                _worker,
                [*(argv if argv is not None else sys.argv[1:])],
                _per_worker_metrics(plan.config.metrics_listen, args.workers),
            )
        return run(lambda: serve(plan, reload, args.reuse_port))
    except BindError as error:
        print(f"grpc-gateway: error: {error}", file=sys.stderr)
        return 1


def _worker(argv: list[str]) -> None:
    """One of --workers N: the same command line, as one worker sharing the port."""
    sys.exit(main([*argv, "--workers", "1", "--reuse-port"]))


def _per_worker_metrics(address: str | None, workers: int) -> list[list[str]]:
    """Each worker counts its own calls, so each serves its own metrics: worker n on PORT+n."""
    if address is None:
        return [[] for _ in range(workers)]
    host, port = parse_host_port(address)
    return [["--metrics-listen", format_host_port(host, port + n)] for n in range(workers)]
