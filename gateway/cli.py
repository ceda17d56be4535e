"""``grpc-gateway``: the command line, its subcommand (``hash-key``) and its exit codes.

0: stopped by a signal; 1: could not listen, or a worker failed; 2: a bad config or command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config.schema import REFERENCE_CONFIG, ConfigError
from runtime import jsonlog
from runtime.addresses import format_host_port, parse_host_port

EXIT_CONFIG_ERROR = 2

# Network I/O on the threads that poll grpc's completion queues instead of its event engine
# measured 17-20% less CPU per forwarded call here. Set before grpc is imported; an operator's
# own value wins.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"


def _address(text: str) -> str:
    try:
        parse_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpc-gateway",
        description="A gRPC gateway: API-key auth, per-user rate limits, transparent forwarding.",
        epilog="grpc-gateway hash-key [KEY] prints the sha256: digest of an API key for the config.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REFERENCE_CONFIG,
        help="TOML config file (default: the reference config)",
    )
    parser.add_argument("--listen", type=_address, help="HOST:PORT to listen on, overriding the config")
    parser.add_argument(
        "--http-listen", type=_address, help="HOST:PORT of the HTTP/JSON door, overriding [http] listen"
    )
    parser.add_argument(
        "--engine", choices=["core", "aio"], help="what carries the calls, overriding the config's engine"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["hash-key"]:
        from gateway.hashkey import main as hash_key

        return hash_key(arguments[1:])
    # grpc is imported from here on, after GRPC_EXPERIMENTS is set.
    from gateway.app import serve
    from gateway.ops.observe import load_observability
    from gateway.ops.workers import check_workers, supervise
    from gateway.plan import Plan, load_plan
    from runtime.serving import BindError, run

    args = _parser().parse_args(argv)
    jsonlog.configure(args.log_level)
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
