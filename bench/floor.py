"""The native data plane's floor: ``python -m bench.floor --upstream HOST:PORT --port N``.

The gateway's own Rust data plane (``gateway_native``, as the native engine builds it), forwarding
the user service's methods, with a decider that admits every call as it comes: no chain, no
observer, no metadata added. Every call is still handed to Python on the event loop's thread and
answered from there, as the gateway's are. Its CPU per call, beside the gateway's in the same run,
splits the gateway's cost in two: the data plane with that hand-over (this floor), and what the
gateway's Python adds to it (the chain, its observers, the facts of the call).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from gateway_native import Arrival, Server
from shop.users.v1 import users_pb2

from gateway.config.schema import Limits, UpstreamKeepalive, UpstreamReconnect
from gateway.engines.native.engine import HEADER_SECONDS, IDLE_SECONDS, MAX_STREAMS
from runtime.serving import run

if TYPE_CHECKING:  # a type alias of the module's stub only
    from gateway_native import Method

GRACE_SECONDS = 1.0


def _server(port: int, upstream: str) -> Server:
    """Built as the native engine builds its own, with the config's defaults."""
    limits = Limits()
    server = Server(
        "127.0.0.1",
        port,
        reuse_port=False,
        io_threads=1,
        tls=None,
        max_concurrent_streams=MAX_STREAMS,
        max_message_bytes=limits.max_message_bytes,
        max_metadata_bytes=limits.max_metadata_bytes,
        idle_timeout=IDLE_SECONDS,
        header_timeout=HEADER_SECONDS,
    )
    service = users_pb2.DESCRIPTOR.services_by_name["UserService"]
    methods: dict[str, Method] = {
        f"/{service.full_name}/{method.name}": (
            upstream,
            service.full_name,
            method.client_streaming,
            method.server_streaming,
            False,
            None,
        )
        for method in service.methods
    }
    keepalive = UpstreamKeepalive()
    reconnect = UpstreamReconnect()
    server.set_plan(
        methods,
        {upstream: ([upstream], None)},
        (keepalive.time, keepalive.timeout, keepalive.without_calls),
        (reconnect.initial, reconnect.max),
    )
    return server


async def _serve(port: int, upstream: str) -> int:
    loop = asyncio.get_running_loop()
    server = _server(port, upstream)
    stopped = loop.create_future()

    def take() -> None:
        batch = server.take_batch()
        if batch is None:
            loop.remove_reader(server.fileno())
            stopped.set_result(None)
            return
        for event in batch:
            if isinstance(event, Arrival):
                event.admit(None, (), ())

    server.start()
    loop.add_reader(server.fileno(), take)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"floor: serving on 127.0.0.1:{port}, forwarding to {upstream}", flush=True)
    await stop.wait()
    server.drain()
    await asyncio.to_thread(server.stop, GRACE_SECONDS)
    await stopped
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the user service, HOST:PORT")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    return run(lambda: _serve(args.port, args.upstream))


if __name__ == "__main__":
    raise SystemExit(main())
