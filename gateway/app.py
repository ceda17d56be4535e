"""The gateway's life: start, reload on SIGHUP, drain on SIGTERM, over whichever engine the config names."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import resource
import signal
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2

from gateway.call import forwarded
from gateway.config.schema import ConfigError
from gateway.engines import engine_named
from gateway.engines.base import Retired
from gateway.ops.own_services import OwnServices
from gateway.plan import Plan, Reloader
from gateway.routing.health import HealthMonitor, Upstreams
from runtime.addresses import format_host_port, parse_host_port
from runtime.serving import wait_for_stop_signal

if TYPE_CHECKING:
    from gateway.doors.http.listener import HttpListener
    from gateway.policy.auth.jwt.providers import TokenKeys

log = logging.getLogger("gateway")

# Seconds a reload waits for the keys of a JWT issuer the running config did not have.
RELOAD_KEYS_WAIT = 10.0

# What only a restart can change: the listener and what the process set up once.
RESTART_ONLY = ("listen", "engine", "tls", "limits", "metrics_listen", "access_log", "reflection", "tracing")


class Readiness:
    """Whether the gateway serves: the one source of ``GET /healthz`` and ``/readyz``, on the HTTP door
    and on the metrics listener (which reads it on its own thread: every fact is one assignment).

    Ready once the plan's listeners are up, the rate-limit store has been connected to (warm_up),
    every JWT issuer's keys are in, and until a drain begins. Upstream health is left out: one route's
    upstream being down does not make the others' calls fail.
    """

    def __init__(self, token_keys: TokenKeys) -> None:
        self.listening = False
        self.store_ready = False
        self.draining = False
        self.token_keys = token_keys  # the running plan's

    def not_ready(self) -> dict[str, str]:
        """What is not ready yet, and why; empty when the gateway is ready."""
        waiting: dict[str, str] = {}
        if not self.listening:
            waiting["plan"] = "starting"
        if not self.store_ready:
            waiting["rate_limit_store"] = "connecting"
        issuers = [key_set.issuer for key_set in self.token_keys.sets if not key_set.ready.done()]
        if issuers:
            waiting["jwks"] = "no keys yet from " + ", ".join(issuers)
        if self.draining:
            waiting["draining"] = "shutting down"
        return waiting

    def probe(self, path: str) -> tuple[int, bytes]:
        """The HTTP status and JSON body of ``GET /healthz`` (alive) or ``GET /readyz``."""
        if path == "/healthz":
            return 200, b'{"status": "alive"}'
        waiting = self.not_ready()
        if not waiting:
            return 200, b'{"status": "ready"}'
        return 503, json.dumps({"status": "not ready", "not_ready": waiting}).encode()


class Gateway:
    """A configured gateway: its engine, its own services and the health checks of its upstreams.

    Build it inside the running event loop.
    """

    def __init__(self, plan: Plan, reuse_port: bool = False) -> None:
        self.plan = plan
        self.readiness = Readiness(plan.token_keys)
        # Every door's calls read it (Call.peer()); one setting per process.
        forwarded.trust(plan.config.trusted_proxies)
        self._own = OwnServices(plan.config, plan.routes)
        self._engine = engine_named(plan.config.engine)(plan, self._own, reuse_port)
        self._http: HttpListener | None = None
        if plan.config.http.listen is not None:
            # The HTTP doors, uvicorn with them, are imported only by a gateway that opens one.
            from gateway.doors.http.listener import HttpListener

            self._http = HttpListener(plan, reuse_port, self.readiness.probe)
        self._monitor, self._upstreams = self._health_monitor(plan)
        self._monitoring: asyncio.Task[None] | None = None
        self._retired = Retired()

    @property
    def addresses(self) -> tuple[str, str | None]:
        """Where the gRPC door and the HTTP door (None: off) listen, with the ports they got."""
        config = self.plan.config
        http = None
        if self._http is not None and config.http.listen is not None:
            http = _with_port(config.http.listen, self._http.port)
        return _with_port(config.listen, self._engine.port), http

    def settle(self) -> None:
        """Any thread but the event loop's: return once the calls that ended before it have
        reached the observers (a metrics scrape counts them), waiting a moment at most."""
        self._engine.settle()

    def _health_monitor(self, plan: Plan) -> tuple[HealthMonitor, Upstreams]:
        config = plan.config
        upstreams = plan.open_upstreams()
        metrics = plan.observability.metrics
        monitor = HealthMonitor(
            plan.routes.upstream_of,
            upstreams,
            self._own.set_health,
            config.health_check_interval,
            on_change=None if metrics is None else metrics.upstream_health,
        )
        return monitor, upstreams

    async def start(self) -> None:
        """Listen, then report health: overall SERVING, each route as its upstream reports, once
        every JWT issuer's keys are in (fetched, or the last good copy from disk)."""
        self.plan.token_keys.start()
        # grpc's health service starts out SERVING: not until the gateway is ready.
        await self._own.set_health("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.plan.policy.warm_up()
        self.readiness.store_ready = True
        await self._engine.start()
        if self._http is not None:
            await self._http.start()
        self.readiness.listening = True
        # Each route's status first: once the gateway says SERVING, every route's status is known.
        await self._monitor.check_all()
        await self._await_token_keys(self.plan, None)
        # What start-up made lives as long as the process: out of the collector's sight, so that the
        # first full collection (the first burst of calls sets it off) does not scan all of it, a
        # pause that outlasts the storage timeout of every decision waiting on Redis meanwhile.
        gc.collect()
        gc.freeze()
        await self._own.set_health("", health_pb2.HealthCheckResponse.SERVING)
        self._monitoring = asyncio.create_task(self._monitor.run())

    async def reload(self, plan: Plan) -> None:
        """Serve new calls by ``plan``; calls in flight finish by the plan they started with."""
        kept = [
            name for name in RESTART_ONLY if getattr(plan.config, name) != getattr(self.plan.config, name)
        ]
        if plan.config.http.listen != self.plan.config.http.listen:
            kept.append("http.listen")
        if kept:
            log.warning("config fields need a restart to change; kept as they were", extra={"fields": kept})
        monitor, upstreams = self._health_monitor(plan)
        await monitor.check_all()
        plan.token_keys.start()  # the keys of a new issuer; those kept from the running plan go on
        await self._await_token_keys(plan, RELOAD_KEYS_WAIT)
        previous, previous_upstreams = self.plan, self._upstreams
        # A store of the plan's own (another URI, password or TLS) is made ready before it takes
        # calls, as at start-up; the previous one is closed once its calls have had time to end.
        new_store = plan.policy.store is not previous.policy.store
        if new_store:
            await plan.policy.warm_up()
        self._engine.swap(plan)
        forwarded.trust(plan.config.trusted_proxies)
        self.readiness.token_keys = plan.token_keys
        previous.token_keys.retire(plan.token_keys)
        if self._http is not None:
            previous_door = self._http.swap(plan)
            self._retired.close_later(plan.config.shutdown_grace + 1, previous_door.close)
        self.plan, self._upstreams = plan, upstreams
        self._own.serve_routes(plan.routes)
        for service in set(previous.routes.upstream_of) - set(plan.routes.upstream_of):
            await self._own.set_health(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        if self._monitoring is not None:
            self._monitoring.cancel()
        self._monitor = monitor
        self._monitoring = asyncio.create_task(monitor.run())
        # Health checks in flight still use the old channels, as calls do the engine's.
        self._retired.close_later(plan.config.shutdown_grace + 1, previous_upstreams.close)
        if new_store:
            self._retired.close_later(plan.config.shutdown_grace + 1, previous.policy.store.close)

    async def stop(self, grace: float) -> None:
        """Turn health to NOT_SERVING, stop accepting calls, let in-flight calls finish within ``grace``."""
        self.readiness.draining = True
        await self._own.enter_graceful_shutdown()
        if self._monitoring is not None:
            self._monitoring.cancel()
        if self._http is not None:
            await asyncio.gather(self._engine.stop(grace), self._http.stop())
        else:
            await self._engine.stop(grace)
        await self._upstreams.close()
        self.plan.token_keys.stop()
        await self.plan.observability.close()

    @staticmethod
    async def _await_token_keys(plan: Plan, within: float | None) -> None:
        """Wait for every issuer's keys; at start as long as it takes (the gateway is not SERVING
        meanwhile), on a reload ``within`` seconds (then a new issuer's tokens wait for its keys)."""
        if not plan.token_keys.sets:
            return
        missing = await plan.token_keys.ready(0)
        if missing:
            log.info("waiting for the keys of JWT issuers", extra={"issuers": missing})
            missing = await plan.token_keys.ready(within)
        if missing:
            log.warning("serving without the keys of JWT issuers yet", extra={"issuers": missing})


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit, and log both in one line.

    Many systems start a process with a soft limit of 1,024 while allowing far more: every HTTP
    connection, gRPC connection and upstream channel takes a descriptor, and with none left the
    HTTP door's accepts fail with no reply at all.
    """
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, error = was, None
    if was != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            error = str(exc)
    fields: dict[str, object] = {"soft": _limit(soft), "hard": _limit(hard), "soft_was": _limit(was)}
    if error is not None:
        fields["error"] = error
    log.info("open-file limit", extra=fields)


def _limit(value: int) -> int | str:
    return "unlimited" if value == resource.RLIM_INFINITY else value


def _with_port(address: str, port: int) -> str:
    """``address`` with the port it was given (``127.0.0.1:0`` listens on some free port)."""
    host, _ = parse_host_port(address)
    return format_host_port(host, port)


async def serve(plan: Plan, reload: Reloader, reuse_port: bool = False) -> int:
    """Run the gateway until SIGTERM or SIGINT; SIGHUP reloads the config through ``reload``."""
    raise_open_file_limit()
    gateway = Gateway(plan, reuse_port)
    started = asyncio.Event()

    async def on_hangup() -> None:
        await started.wait()  # a SIGHUP during start-up reloads once the gateway serves
        try:
            new_plan = reload(gateway.plan)
        except ConfigError as error:
            log.error("config reload rejected; the running config stays", extra={"error": str(error)})
            return
        await gateway.reload(new_plan)
        log.info("config reloaded", extra={"routes": dict(new_plan.routes.upstream_of)})

    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(on_hangup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Every signal is handled before the gateway says SERVING: a SIGHUP or SIGTERM sent the moment
    # it does must not meet the default action (the end of the process).
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup)
    stopping = asyncio.ensure_future(wait_for_stop_signal())
    await asyncio.sleep(0)  # lets it install its handlers
    metrics_server = plan.observability.metrics_server
    if metrics_server is not None:
        metrics_server.probes = gateway.readiness.probe
        metrics_server.settle = gateway.settle
        metrics_server.start()
    config = plan.config
    starting = asyncio.ensure_future(gateway.start())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped before it was ready (still waiting for a JWT issuer's keys, say)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    else:
        starting.result()
        started.set()
        address, http = gateway.addresses
        log.info(
            "listening",
            extra={
                "address": address,
                "engine": config.engine,
                "tls": "off" if config.tls is None else ("mtls" if config.tls.client_ca else "tls"),
                "routes": dict(plan.routes.upstream_of),
                "metrics": config.metrics_listen,
                "http": http,
            },
        )
        await stopping
    log.info("shutting down", extra={"grace_seconds": config.shutdown_grace})
    await gateway.stop(config.shutdown_grace)
    log.info("stopped")
    return 0
