"""Start-up shared by the demo services: options, JSON logs, data, server, health, reflection."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from runtime import jsonlog
from runtime.addresses import format_host_port, parse_host_port
from runtime.calllog import CallLogInterceptor
from runtime.introspection import add_health, add_reflection
from runtime.serving import BindError, listen, run, serve_until_signalled
from services import cli, data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """How to run one demo service."""

    prog: str
    """The command's name, used in usage and error messages."""
    description: str
    default_listen: str
    service_name: str
    """Full proto name of the service, for health and reflection."""
    register: Callable[[data.DataSet, grpc.aio.Server], None]
    """Adds the servicer for the data set to the server."""


def main(service: Service, argv: Sequence[str] | None = None) -> int:
    """Run ``service`` until SIGTERM or SIGINT; the process exit status.

    0 after a graceful stop, 1 when the address cannot be bound, 2 for bad options or data.
    """
    options = cli.parse_args(service.prog, service.description, service.default_listen, argv)
    jsonlog.configure(options.log_level)
    try:
        dataset = data.load() if options.data is None else data.load(options.data)
    except data.DataError as error:
        print(f"{service.prog}: error: {error}", file=sys.stderr)
        return 2
    return run(lambda: _serve(service, dataset, options))


async def _serve(service: Service, dataset: data.DataSet, options: cli.Options) -> int:
    server = grpc.aio.server(
        interceptors=[CallLogInterceptor()],
        # Without SO_REUSEPORT a second server on a busy port fails to bind instead of sharing it.
        options=[("grpc.so_reuseport", 0)],
    )
    service.register(dataset, server)
    health = add_health(server)
    for name in ("", service.service_name):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    add_reflection(server, [service.service_name])
    try:
        port = listen(server, options.listen)
    except BindError as error:
        print(f"{service.prog}: error: {error}", file=sys.stderr)
        return 1
    await server.start()
    host, _ = parse_host_port(options.listen)
    log.info("listening", extra={"address": format_host_port(host, port), "service": service.service_name})
    await serve_until_signalled(server, options.grace, before_stop=health.enter_graceful_shutdown)
    return 0
