"""One long-lived channel per upstream, and the background health checks that follow them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config.schema import Route, UpstreamKeepalive, UpstreamReconnect
from gateway.routing import channels
from gateway.routing.tls import UpstreamTransport, open_channel

log = logging.getLogger(__name__)

# Long enough for a busy upstream to answer; an upstream that cannot is not serving.
CHECK_TIMEOUT = 1.0
_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class Upstreams:
    """One channel per upstream (a route's ``upstream``), created inside the running event loop.

    Routes to the same upstream share its channel; see gateway/routing/channels.py for how it is set up.
    """

    def __init__(
        self,
        routes: Iterable[Route],
        keepalive: UpstreamKeepalive,
        reconnect: UpstreamReconnect,
        transports: Mapping[str, UpstreamTransport] | None = None,
        blocking: bool = False,
    ) -> None:
        """``blocking``: channels of grpc's blocking API instead of grpc.aio's (for calls made
        from a thread of their own)."""
        self._blocking = blocking
        # An upstream without a TLS transport is reached in plaintext.
        tls = transports or {}
        self._channels = {
            upstream: open_channel(
                channels.target(shared[0].upstreams),
                tls.get(upstream),
                channels.channel_options(shared, keepalive, reconnect),
                blocking,
            )
            for upstream, shared in channels.routes_by_upstream(routes).items()
        }

    def channel(self, upstream: str) -> Any:
        """The grpc.aio channel to ``upstream`` (a blocking one if so opened)."""
        return self._channels[upstream]

    async def close(self) -> None:
        if self._blocking:
            for channel in self._channels.values():
                channel.close()
            return
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))


# Told (service, upstream, serving) whenever a route's upstream health changes, e.g. to set a metric.
HealthListener = Callable[[str, str, bool], None]


class HealthMonitor:
    """Mirrors each routed service's upstream health into the gateway's own health service (``set_status``).

    Checked in the background, so that no call waits on it. A service is SERVING while its
    upstream says so; an upstream without a health service counts as serving when it answers.
    """

    def __init__(
        self,
        upstream_of: dict[str, str],
        upstreams: Upstreams,
        set_status: Callable[[str, int], Awaitable[None]],
        interval: float,
        on_change: HealthListener | None = None,
    ) -> None:
        self._upstream_of = upstream_of
        self._upstreams = upstreams
        self._set_status = set_status
        self._interval = interval
        self._on_change = on_change
        self._last: dict[str, int] = {}

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(service) for service in self._upstream_of))

    async def run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self._interval)

    async def _check(self, service: str) -> None:
        address = self._upstream_of[service]
        stub = health_pb2_grpc.HealthStub(self._upstreams.channel(address))
        status = await self._ask(stub, service)
        if self._last.get(service) != status:
            self._last[service] = status
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            log.info("upstream health", extra={"service": service, "upstream": address, "status": name})
            await self._set_status(service, status)
            if self._on_change is not None:
                self._on_change(service, address, status == _SERVING)

    async def _ask(self, stub: health_pb2_grpc.HealthStub, service: str) -> int:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CHECK_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND and service:
                # The upstream reports only its overall health.
                return await self._ask(stub, "")
            return _SERVING if error.code() == grpc.StatusCode.UNIMPLEMENTED else _NOT_SERVING
        status: int = reply.status
        return status
