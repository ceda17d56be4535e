"""GET /healthz and /readyz, on the HTTP door and on the metrics listener, without credentials: alive
while the process serves; ready only with its plan, store and JWKS in and no drain under way."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.jwt_support import Provider, SigningKey, provider_toml, serving
from tests.support.processes import free_port, running


@dataclass(frozen=True)
class Listeners:
    grpc: str
    http: str
    metrics: str
    process: subprocess.Popen[str]


def _args(config: Path) -> tuple[list[str], int, int, int]:
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    args = [
        *("-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
        *("--http-listen", f"127.0.0.1:{http_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"),
    ]
    return args, port, http_port, metrics_port


@contextlib.contextmanager
def listening(config: Path) -> Iterator[Listeners]:
    args, port, http_port, metrics_port = _args(config)
    with running(args, port) as process:
        yield Listeners(
            f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}", process
        )


async def probe(base: str, path: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        reply = await client.get(path)
    assert reply.headers["content-type"] == "application/json"
    return reply.status_code, reply.json()


async def test_both_listeners_say_alive_and_ready_once_serving(services: Services, tmp_path: Path) -> None:
    with listening(write_config(tmp_path, gateway_toml(services.routes))) as started:
        for base in (started.http, started.metrics):
            assert await probe(base, "/healthz") == (200, {"status": "alive"})
            assert await probe(base, "/readyz") == (200, {"status": "ready"})
        async with httpx.AsyncClient(timeout=5) as client:
            # HEAD too; other verbs on the HTTP door are not probes.
            for base in (started.http, started.metrics):
                head = await client.head(base + "/readyz")
                assert (head.status_code, head.content) == (200, b"")
            assert (await client.post(started.http + "/readyz")).status_code == 404
            # The metrics are still served beside them.
            assert "grpc_gateway_calls_total" in (await client.get(started.metrics + "/metrics")).text


async def test_not_ready_while_a_jwks_is_not_loaded(services: Services, tmp_path: Path) -> None:
    provider = Provider(keys=[SigningKey.rsa("k1")], down=True)
    with serving(provider) as issuer:
        toml = provider_toml(issuer, jwks_refresh=0.5, jwks_min_refetch=0.1)
        config = write_config(tmp_path, gateway_toml(services.routes, rules="") + toml)
        args, port, http_port, metrics_port = _args(config)
        bases = (f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}")
        with contextlib.ExitStack() as stack:
            starting = asyncio.ensure_future(asyncio.to_thread(stack.enter_context, running(args, port)))
            seen: dict[str, tuple[int, dict[str, object]]] = {}
            deadline = time.monotonic() + 15
            while len(seen) < len(bases) or len(provider.fetches) < 2:
                assert time.monotonic() < deadline, seen
                for base in bases:
                    with contextlib.suppress(httpx.TransportError):  # not listening yet
                        status, body = await probe(base, "/readyz")
                        if "plan" not in body.get("not_ready", {}):  # type: ignore[operator]
                            seen[base] = (status, body)
                await asyncio.sleep(0.05)
            for base in bases:
                assert seen[base] == (
                    503,
                    {"status": "not ready", "not_ready": {"jwks": f"no keys yet from {issuer}"}},
                )
                assert await probe(base, "/healthz") == (200, {"status": "alive"})
            assert not starting.done()
            provider.down = False
            await asyncio.wait_for(starting, 15)
            for base in bases:
                assert await probe(base, "/readyz") == (200, {"status": "ready"})
            await asyncio.to_thread(stack.close)


async def test_not_ready_while_draining(services: Services, tmp_path: Path) -> None:
    toml = gateway_toml(services.routes, extra="shutdown_grace = 5.0")
    with listening(write_config(tmp_path, toml)) as started:
        assert await probe(started.metrics, "/readyz") == (200, {"status": "ready"})
        async with grpc.aio.insecure_channel(started.grpc) as channel:
            # A health watch is a call in flight: it holds the drain open until the grace ends.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            started.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 4
            while (reply := await probe(started.metrics, "/readyz"))[0] == 200:
                assert time.monotonic() < deadline, "still ready after SIGTERM"
                await asyncio.sleep(0.02)
            assert reply == (503, {"status": "not ready", "not_ready": {"draining": "shutting down"}})
            assert await probe(started.metrics, "/healthz") == (200, {"status": "alive"})
            watch.cancel()
        assert await asyncio.to_thread(started.process.wait, 10) == 0
