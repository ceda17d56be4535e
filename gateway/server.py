"""Assembles the gateway: the call pipeline, the proxy, health and reflection; reloads on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from gateway.config import ConfigError
from gateway.core import CoreServer, Plan, UpstreamChannel, build_plan, open_channels
from gateway.observe import (
    CallObservers,
    Observability,
    ObservingInterceptor,
    load_observability,
    local_method_kinds,
    local_methods,
)
from gateway.pipeline import Pipeline, Switchboard
from gateway.proxy import ProxyTable
from gateway.ratelimit import RateLimitInterceptor, method_guards
from gateway.setup import Setup
from gateway.upstreams import HealthMonitor, Upstreams
from runtime.descriptors import DescriptorCatalog
from runtime.introspection import HEALTH_SERVICE, add_health, add_reflection
from runtime.serving import BindError, listen, wait_for_stop_signal

log = logging.getLogger("gateway")

# What only a restart can change: the listener and what the process set up once.
RESTART_ONLY = ("listen", "engine", "tls", "limits", "metrics_listen", "access_log", "reflection")


def _upstreams(setup: Setup) -> Upstreams:
    config = setup.config
    return Upstreams(config.routes, config.upstream_keepalive, setup.security.upstream_transports)


class Gateway:
    """A configured gateway server. Build it inside the running event loop."""

    def __init__(
        self, setup: Setup, reuse_port: bool = False, observability: Observability | None = None
    ) -> None:
        self.setup = setup
        config = setup.config
        self._observability = observability or load_observability(config)
        self._local = local_methods()
        self._reflects = config.reflection.enabled
        # Channels for the health checks; on the aio engine they also carry the calls.
        self._upstreams = _upstreams(setup)
        # Off unless asked (--workers): a second gateway could otherwise bind the port unnoticed.
        self._server_options = [("grpc.so_reuseport", int(reuse_port)), *setup.security.server_options]
        self._core: CoreServer | None = None
        self._switchboard: Switchboard | None = None
        self._local_folder: str | None = None
        if config.engine == "core":
            # The aio server serves only health and reflection, on a private socket, behind the core.
            self.server = grpc.aio.server()
            self._observability.access_log.owner_flushes = True
        else:
            self._switchboard = Switchboard(self._pipeline(setup, self._upstreams))
            self.server = grpc.aio.server(interceptors=[self._switchboard], options=self._server_options)
        self._health = add_health(self.server)
        self._reflection = None
        if config.reflection.enabled:
            self._reflection = add_reflection(self.server, setup.routes.upstream_of, self._catalog(setup))
        self._monitor = self._health_monitor(setup, self._upstreams)
        self._monitoring: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # channels of earlier configs, closed later
        self.port = 0
        self.metrics_port = 0

    def _pipeline(self, setup: Setup, upstreams: Upstreams) -> Pipeline:
        observing = ObservingInterceptor(self._observers(setup))
        # Observing first, to see every call however it ends; then the metadata check and auth:
        # a call without a valid key never spends budget.
        interceptors = (
            observing,
            *setup.security.interceptors(),
            RateLimitInterceptor(setup.policy, setup.routes),
        )
        return Pipeline(interceptors, ProxyTable(setup.routes, upstreams), self._served_locally())

    def _served_locally(self) -> frozenset[str]:
        return frozenset(
            path for path, name in self._local.items() if name == HEALTH_SERVICE or self._reflects
        )

    def _observers(self, setup: Setup) -> CallObservers:
        return CallObservers(
            setup.routes,
            lambda path: bool(setup.policy.rules_for(path)),
            self._local,
            self._observability.metrics,
            self._observability.access_log,
        )

    @staticmethod
    def _catalog(setup: Setup) -> DescriptorCatalog:
        # Clients such as grpcurl resolve the rich error details of refusals through reflection.
        setup.routes.catalog.add_compiled(error_details_pb2.DESCRIPTOR)
        return setup.routes.catalog

    def _health_monitor(self, setup: Setup, upstreams: Upstreams) -> HealthMonitor:
        metrics = self._observability.metrics
        return HealthMonitor(
            setup.routes.upstream_of,
            upstreams,
            self._health,
            setup.config.health_check_interval,
            on_change=None if metrics is None else metrics.upstream_health,
        )

    def _core_plan(self, setup: Setup) -> Plan:
        assert self._local_folder is not None
        local_channel = UpstreamChannel("local", f"unix:{self._local_folder}/local.sock", ())
        served = self._served_locally()
        return build_plan(
            setup.routes,
            open_channels(
                setup.config.routes, setup.config.upstream_keepalive, setup.security.upstream_transports
            ),
            {path: kind for path, kind in local_method_kinds().items() if path in served},
            local_channel,
            method_guards(setup.policy, setup.routes),
            setup.security.authenticator(),
            self._observers(setup),
            setup.policy.storage,
            asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        """Listen, then report health: overall SERVING, each route as its upstream reports."""
        if self._observability.metrics_server is not None:
            self.metrics_port = self._observability.metrics_server.start()
        config = self.setup.config
        await self.setup.policy.warm_up()
        if config.engine == "core":
            # A folder of this process's own (mode 0700): no other user can reach the socket.
            self._local_folder = tempfile.mkdtemp(prefix="grpc-gateway-")
            try:
                self._core = CoreServer(
                    self._core_plan(self.setup),
                    config.listen,
                    self.setup.security.server_credentials,
                    self._server_options,
                )
            except BindError:
                shutil.rmtree(self._local_folder, ignore_errors=True)
                raise
            self.server.add_insecure_port(f"unix:{self._local_folder}/local.sock")
            await self.server.start()
            self.port = self._core.port
            self._core.start()
        else:
            self.port = listen(self.server, config.listen, self.setup.security.server_credentials)
            await self.server.start()
        # Each route's status first: once the gateway says SERVING, every route's status is known.
        await self._monitor.check_all()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._monitoring = asyncio.create_task(self._monitor.run())

    async def reload(self, setup: Setup) -> None:
        """Serve new calls with ``setup``; calls in flight finish with the handlers they started with."""
        kept = [
            name for name in RESTART_ONLY if getattr(setup.config, name) != getattr(self.setup.config, name)
        ]
        if kept:
            log.warning("config fields need a restart to change; kept as they were", extra={"fields": kept})
        upstreams = _upstreams(setup)
        monitor = self._health_monitor(setup, upstreams)
        await monitor.check_all()
        previous_upstreams, previous_setup = self._upstreams, self.setup
        previous_plan = None
        if self._switchboard is not None:
            self._switchboard.pipeline = self._pipeline(setup, upstreams)
        if self._core is not None:
            previous_plan, self._core.plan = self._core.plan, self._core_plan(setup)
        self.setup, self._upstreams = setup, upstreams
        if self._reflection is not None:
            self._reflection.serve(setup.routes.upstream_of, self._catalog(setup))
        for service in set(previous_setup.routes.upstream_of) - set(setup.routes.upstream_of):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        if self._monitoring is not None:
            self._monitoring.cancel()
        self._monitor = monitor
        self._monitoring = asyncio.create_task(monitor.run())

        # Calls in flight still use the old channels: close them once they have had time to end.
        async def close_previous() -> None:
            await asyncio.sleep(setup.config.shutdown_grace + 1)
            await previous_upstreams.close()
            if previous_plan is not None:
                previous_plan.close()

        closing = asyncio.create_task(close_previous())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def stop(self, grace: float) -> None:
        """Turn health to NOT_SERVING, stop accepting calls, let in-flight calls finish within ``grace``."""
        await self._health.enter_graceful_shutdown()
        if self._monitoring is not None:
            self._monitoring.cancel()
        if self._core is not None:
            await asyncio.to_thread(self._core.stop, grace)
            self._core.plan.close()
            await self.server.stop(0)
            shutil.rmtree(str(self._local_folder), ignore_errors=True)
        else:
            await self.server.stop(grace)
        await self._upstreams.close()
        await self._observability.close()


async def serve(
    setup: Setup,
    reload: Callable[[Setup], Setup],
    reuse_port: bool = False,
    observability: Observability | None = None,
) -> int:
    """Run the gateway until SIGTERM or SIGINT; SIGHUP reloads the config from ``reload``."""
    gateway = Gateway(setup, reuse_port, observability)
    await gateway.start()
    config = setup.config
    log.info(
        "listening",
        extra={
            "address": config.listen,
            "tls": "off" if config.tls is None else ("mtls" if config.tls.client_ca else "tls"),
            "routes": dict(setup.routes.upstream_of),
            "metrics": config.metrics_listen,
        },
    )

    async def on_hangup() -> None:
        try:
            new_setup = reload(gateway.setup)
        except ConfigError as error:
            log.error("config reload rejected; the running config stays", extra={"error": str(error)})
            return
        await gateway.reload(new_setup)
        log.info("config reloaded", extra={"routes": dict(new_setup.routes.upstream_of)})

    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(on_hangup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup)
    await wait_for_stop_signal()
    log.info("shutting down", extra={"grace_seconds": config.shutdown_grace})
    await gateway.stop(config.shutdown_grace)
    log.info("stopped")
    return 0
