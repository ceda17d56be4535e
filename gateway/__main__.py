"""``grpc-gateway``: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import REFERENCE_CONFIG, ConfigError, load_config
from gateway.limiter import RateLimitPolicy
from gateway.routes import build_routes, load_catalog
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    jsonlog.configure(args.log_level)
    try:
        config = load_config(args.config)
        if args.listen:
            config = config.model_copy(update={"listen": args.listen})
        routes = build_routes(config, load_catalog(config))
        policy = RateLimitPolicy(config.rate_limit, routes)
    except ConfigError as error:
        print(f"grpc-gateway: error: config {args.config}: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from gateway.server import serve

    try:
        return run(lambda: serve(config, routes, policy))
    except BindError as error:
        print(f"grpc-gateway: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
