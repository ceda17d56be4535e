"""``grpc-gateway``: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import REFERENCE_CONFIG, ConfigError, load_config
from gateway.limiter import RateLimitPolicy
from gateway.routes import build_routes, load_catalog
from gateway.workers import check_workers, supervise
from runtime import jsonlog
from runtime.addresses import parse_host_port
from runtime.serving import BindError, run

EXIT_CONFIG_ERROR = 2


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
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REFERENCE_CONFIG,
        help="TOML config file (default: the reference config)",
    )
    parser.add_argument("--listen", type=_address, help="HOST:PORT to listen on, overriding the config")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    jsonlog.configure(args.log_level)
    try:
        config = load_config(args.config)
        if args.listen:
            config = config.model_copy(update={"listen": args.listen})
        routes = build_routes(config, load_catalog(config))
        policy = RateLimitPolicy(config.rate_limit, routes, clients=(key.client for key in config.api_keys))
        if args.workers > 1:
            check_workers(config, args.workers)
    except ConfigError as error:
        print(f"grpc-gateway: error: config {args.config}: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        if args.workers > 1:
            return supervise(args.workers, config.listen, [*(argv if argv is not None else sys.argv[1:])])
        from gateway.server import serve

        return run(lambda: serve(config, routes, policy, args.reuse_port))
    except BindError as error:
        print(f"grpc-gateway: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
