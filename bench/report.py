"""From raw runs to the numbers that matter: medians across rounds, ratios, and the printed table."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.measure import H2LOAD_CPU, Run

SERVICE = "service"
UNARY = "unary"
LATENCY = "latency"
STREAM = "stream"
DIRECT = "direct"
YARDSTICK = "yardstick"
GATEWAY = "gateway"
GATEWAY_NO_LIMITER = "gateway-nolimit"
FLOOR = "floor"
GATEWAY_AIO = "gateway-aio"
GATEWAY_STEP = "gateway-step"
HTTP = "http"
GATEWAY_HTTP = "gateway-http"
GATEWAY_GRPC_WEB = "gateway-grpc-web"
FASTAPI = "fastapi"
NOTEBOOK = "notebook"
GATEWAY_REDIS = "gateway-redis"
REDIS = "redis"
ENVOY = "envoy"
NGINX = "nginx"

# Path name -> (label in the table, the forwarding server on that path, if any).
PATHS: dict[str, tuple[str, str | None]] = {
    DIRECT: ("direct to the service", None),
    YARDSTICK: ("yardstick", YARDSTICK),
    # bench/gateway.toml on the default engine (native, the Rust data plane): the product's gateway.
    GATEWAY: ("gateway", GATEWAY),
    GATEWAY_NO_LIMITER: ("gateway, no rate limit rules", GATEWAY_NO_LIMITER),
    # The native data plane with a decider that admits every call, no chain, no observer (bench/floor.py).
    FLOOR: ("native data plane, a decider that admits all", FLOOR),
    # The same config as GATEWAY on the fallback engine (--engine aio): what grpc.aio costs.
    GATEWAY_AIO: ("gateway, aio engine", GATEWAY_AIO),
    # The anchors (bench/anchors.py): key check, a limiter that never trips, no access log, one worker.
    ENVOY: ("Envoy", ENVOY),
    NGINX: ("nginx", NGINX),
    # GATEWAY's config with one user step (examples/tenants.py) after auth.
    GATEWAY_STEP: ("gateway, one user step", GATEWAY_STEP),
    # GATEWAY's config with its budgets in a redis-server of the bench's own.
    GATEWAY_REDIS: ("gateway, budgets in Redis", GATEWAY_REDIS),
    # GATEWAY's own process, on its HTTP/JSON door (GET /v1/users/101; auth and the per-user rule on).
    GATEWAY_HTTP: ("gateway, HTTP/JSON door", GATEWAY),
    # The same door and process, the same GetUser as gRPC-Web (binary), POSTed over HTTP/1.1.
    GATEWAY_GRPC_WEB: ("gateway, gRPC-Web", GATEWAY),
    # What a team writes by hand: FastAPI calling GetUser with the stubs over grpc.aio (no auth, no limit).
    FASTAPI: ("hand-written FastAPI endpoint", FASTAPI),
    # The notebook's FastAPI gateway as it is (its services in-process, its limit out of reach).
    NOTEBOOK: ("the notebook's gateway", NOTEBOOK),
}


@dataclass(frozen=True)
class Spread:
    """The median of a quantity across rounds, with its smallest and largest value."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        items = list(values)
        if not items:
            raise ValueError("no values")
        return cls(statistics.median(items), min(items), max(items), len(items))


@dataclass(frozen=True)
class PathStats:
    req_per_s: Spread
    p50_us: Spread
    p99_us: Spread
    proxy_cpu_us: Spread | None
    service_cpu_us: Spread
    other_cpu_share: Spread


def _runs(runs: Sequence[Run], scenario: str, path: str) -> list[Run]:
    return sorted((r for r in runs if r.scenario == scenario and r.path == path), key=lambda r: r.round)


def path_stats(runs: Sequence[Run], scenario: str, path: str) -> PathStats | None:
    """Medians of one path in one scenario; None if it never ran."""
    chosen = _runs(runs, scenario, path)
    if not chosen:
        return None
    proxy = PATHS[path][1]
    return PathStats(
        req_per_s=Spread.of(r.req_per_s for r in chosen),
        p50_us=Spread.of(r.p50_us for r in chosen),
        p99_us=Spread.of(r.p99_us for r in chosen),
        proxy_cpu_us=None if proxy is None else Spread.of(r.cpu_us_per_call(proxy) for r in chosen),
        service_cpu_us=Spread.of(r.cpu_us_per_call(SERVICE) for r in chosen),
        other_cpu_share=Spread.of(r.other_cpu_share for r in chosen),
    )


def per_round(
    runs: Sequence[Run], scenario: str, paths: tuple[str, str], combine: Callable[[Run, Run], float]
) -> Spread | None:
    """``combine`` of the two paths' runs of each round (compared within a round, so slow drifts of
    the machine cancel out), across rounds."""
    first = {r.round: r for r in _runs(runs, scenario, paths[0])}
    second = {r.round: r for r in _runs(runs, scenario, paths[1])}
    rounds = sorted(first.keys() & second.keys())
    if not rounds:
        return None
    return Spread.of(combine(first[n], second[n]) for n in rounds)


@dataclass(frozen=True)
class Comparison:
    """A derived number, its target if it has one, and what it is."""

    name: str
    value: Spread | None
    unit: str
    target: str = ""
    meets: bool | None = None


def _at_most(name: str, value: Spread | None, bound: float) -> Comparison:
    return Comparison(name, value, "x", f"≤ {bound:.2f}", None if value is None else value.median <= bound)


def proxy_cpu_ratio(numerator: Run, denominator: Run) -> float:
    """CPU per call of the forwarder on one path's run over that of another's."""
    over = PATHS[numerator.path][1]
    under = PATHS[denominator.path][1]
    if over is None or under is None:
        raise ValueError(f"{numerator.path} or {denominator.path} has no forwarder")
    return numerator.cpu_us_per_call(over) / denominator.cpu_us_per_call(under)


def python_cost(gateway: Run, floor: Run) -> float:
    """CPU per call the gateway spends over the floor: its chain, observers and the call's facts."""
    return gateway.cpu_us_per_call(GATEWAY) - floor.cpu_us_per_call(FLOOR)


def p99_ratio(numerator: Run, denominator: Run) -> float:
    return numerator.p99_us / denominator.p99_us


def anchor_comparisons(runs: Sequence[Run], messages_per_stream: int | None = None) -> list[Comparison]:
    """The product's goal: the gateway (its default engine, native) against Envoy (and nginx) in the
    same run, with the aio engine beside them.

    ``messages_per_stream``: messages of one streamed call, for CPU per message (None: not shown).
    """
    cpu = per_round(runs, UNARY, (GATEWAY, ENVOY), proxy_cpu_ratio)
    nginx = per_round(runs, UNARY, (GATEWAY, NGINX), proxy_cpu_ratio)
    p99 = per_round(runs, UNARY, (GATEWAY, ENVOY), p99_ratio)
    stream = per_round(runs, STREAM, (GATEWAY, ENVOY), proxy_cpu_ratio)
    found = [
        _at_most("unary: gateway CPU/call ÷ Envoy CPU/call", cpu, 0.80),
        _at_most("unary: gateway CPU/call ÷ nginx CPU/call (stretch)", nginx, 1.20),
        _at_most("unary: gateway p99 ÷ Envoy p99, same load", p99, 1.20),
        Comparison(
            "unary: gateway (aio engine) CPU/call ÷ Envoy CPU/call",
            per_round(runs, UNARY, (GATEWAY_AIO, ENVOY), proxy_cpu_ratio),
            "x",
        ),
        Comparison(
            "unary: data plane floor CPU/call ÷ Envoy CPU/call",
            per_round(runs, UNARY, (FLOOR, ENVOY), proxy_cpu_ratio),
            "x",
        ),
        Comparison(
            "unary: the gateway's Python per call (gateway minus floor)",
            per_round(runs, UNARY, (GATEWAY, FLOOR), python_cost),
            "µs",
        ),
        Comparison(
            "unary: Envoy CPU/call ÷ nginx CPU/call",
            per_round(runs, UNARY, (ENVOY, NGINX), proxy_cpu_ratio),
            "x",
        ),
        _at_most("stream: gateway CPU per message ÷ Envoy's", stream, 1.00),
    ]
    if messages_per_stream is not None:
        shown = {GATEWAY: "gateway", ENVOY: "Envoy", NGINX: "nginx"}
        for path, label in shown.items():
            chosen = _runs(runs, STREAM, path)
            forwarder = PATHS[path][1]
            if not chosen or forwarder is None:
                continue
            found.append(
                Comparison(
                    f"stream: {label} CPU per message",
                    Spread.of(r.cpu_us_per_call(forwarder) / messages_per_stream for r in chosen),
                    "µs",
                )
            )
    return found


def comparisons(runs: Sequence[Run], messages_per_stream: int | None = None) -> list[Comparison]:
    """The ratios and differences the performance targets are stated in: the anchors' first
    (:func:`anchor_comparisons`), then the yardstick's and the rest."""

    def cpu_ratio_of(forwarder: str) -> Callable[[Run, Run], float]:
        def cpu_ratio(gateway: Run, yardstick: Run) -> float:
            return gateway.cpu_us_per_call(forwarder) / yardstick.cpu_us_per_call(YARDSTICK)

        return cpu_ratio

    def rps_ratio(gateway: Run, yardstick: Run) -> float:
        return gateway.req_per_s / yardstick.req_per_s

    def service_side_ceiling(gateway: Run, yardstick: Run) -> float:
        # Pinned, the service and h2load share one CPU: whatever the forwarder costs, calls through
        # it cannot go faster than that CPU serves them (at the service and h2load costs per call
        # seen with the gateway in front).
        busy_per_call = (gateway.cpu_seconds[SERVICE] + gateway.cpu_seconds[H2LOAD_CPU]) / gateway.requests
        return 1 / busy_per_call / yardstick.req_per_s

    def limiter_cost(on: Run, off: Run) -> float:
        return on.cpu_us_per_call(GATEWAY) - off.cpu_us_per_call(GATEWAY_NO_LIMITER)

    def step_cost(on: Run, off: Run) -> float:
        return on.cpu_us_per_call(GATEWAY_STEP) - off.cpu_us_per_call(GATEWAY)

    def door_cpu_ratio(door: Run, other: Run) -> float:
        return door.cpu_us_per_call(GATEWAY) / other.cpu_us_per_call(PATHS[other.path][1] or SERVICE)

    def redis_cost(on: Run, off: Run) -> float:
        return on.cpu_us_per_call(GATEWAY_REDIS) - off.cpu_us_per_call(GATEWAY)

    def added_p50_ms(through: Run, direct: Run) -> float:
        return (through.p50_us - direct.p50_us) / 1000

    def stream_ratio(gateway: Run, direct: Run) -> float:
        # Against what the call costs the service when called directly: a denominator the gateway
        # cannot inflate (the gateway's client side changes how hard the service works, see below).
        return gateway.cpu_us_per_call(GATEWAY) / direct.cpu_us_per_call(SERVICE)

    def stream_ratio_same_run(gateway: Run, _: Run) -> float:
        # The service's CPU for the very calls the gateway forwarded, in the same run.
        return gateway.cpu_us_per_call(GATEWAY) / gateway.cpu_us_per_call(SERVICE)

    http_handwritten = per_round(runs, HTTP, (GATEWAY_HTTP, FASTAPI), door_cpu_ratio)
    http_grpc = per_round(runs, HTTP, (GATEWAY_HTTP, GATEWAY), door_cpu_ratio)
    http_notebook = per_round(runs, HTTP, (GATEWAY_HTTP, NOTEBOOK), rps_ratio)
    grpc_web = per_round(runs, HTTP, (GATEWAY_GRPC_WEB, GATEWAY_HTTP), door_cpu_ratio)
    cpu = per_round(runs, UNARY, (GATEWAY, YARDSTICK), cpu_ratio_of(GATEWAY))
    redis = per_round(runs, UNARY, (GATEWAY_REDIS, GATEWAY), redis_cost)
    rps = per_round(runs, UNARY, (GATEWAY, YARDSTICK), rps_ratio)
    stream = per_round(runs, STREAM, (GATEWAY, DIRECT), stream_ratio)
    return [
        *anchor_comparisons(runs, messages_per_stream),
        Comparison(
            "unary: gateway CPU/call ÷ yardstick CPU/call",
            cpu,
            "x",
            "≤ 0.80",
            None if cpu is None else cpu.median <= 0.80,
        ),
        Comparison(
            "unary: gateway req/s ÷ yardstick req/s",
            rps,
            "x",
            "≥ 1.25",
            None if rps is None else rps.median >= 1.25,
        ),
        Comparison(
            "unary: ceiling of that ratio (CPU 0: service + h2load)",
            per_round(runs, UNARY, (GATEWAY, YARDSTICK), service_side_ceiling),
            "x",
        ),
        Comparison(
            "unary: rate limiter CPU/call (gateway with minus without rules)",
            per_round(runs, UNARY, (GATEWAY, GATEWAY_NO_LIMITER), limiter_cost),
            "µs",
        ),
        Comparison(
            "unary: a user step reading metadata, CPU/call (with minus without)",
            per_round(runs, UNARY, (GATEWAY_STEP, GATEWAY), step_cost),
            "µs",
        ),
        Comparison(
            "unary: budgets in Redis, gateway CPU/call over memory's",
            redis,
            "µs",
            "≤ 100",
            None if redis is None else redis.median <= 100,
        ),
        Comparison(
            "unary: Redis's own CPU/call (a decision's work in redis-server)",
            per_round(runs, UNARY, (GATEWAY_REDIS, GATEWAY), lambda on, _: on.cpu_us_per_call(REDIS)),
            "µs",
        ),
        Comparison(
            "unary: gateway (aio engine) CPU/call ÷ yardstick CPU/call",
            per_round(runs, UNARY, (GATEWAY_AIO, YARDSTICK), cpu_ratio_of(GATEWAY_AIO)),
            "x",
        ),
        Comparison(
            "-c1 -m1: p50 added by the gateway over a direct call",
            per_round(runs, LATENCY, (GATEWAY, DIRECT), added_p50_ms),
            "ms",
        ),
        Comparison(
            "-c1 -m1: p50 added by the yardstick over a direct call",
            per_round(runs, LATENCY, (YARDSTICK, DIRECT), added_p50_ms),
            "ms",
        ),
        Comparison(
            "-c1 -m1: p50 added by Envoy over a direct call",
            per_round(runs, LATENCY, (ENVOY, DIRECT), added_p50_ms),
            "ms",
        ),
        Comparison(
            "stream: gateway CPU/call ÷ service CPU/call, direct",
            stream,
            "x",
            "≤ 1.50",
            None if stream is None else stream.median <= 1.50,
        ),
        Comparison(
            "stream: gateway CPU/call ÷ service CPU/call, same calls",
            per_round(runs, STREAM, (GATEWAY, DIRECT), stream_ratio_same_run),
            "x",
        ),
        Comparison(
            "http: door CPU/call ÷ hand-written FastAPI endpoint's",
            http_handwritten,
            "x",
            "≤ 0.80",
            None if http_handwritten is None else http_handwritten.median <= 0.80,
        ),
        Comparison(
            "http: door CPU/call ÷ the same call on the gRPC door",
            http_grpc,
            "x",
            "≤ 1.00",
            None if http_grpc is None else http_grpc.median <= 1.00,
        ),
        Comparison(
            "http: door req/s ÷ the notebook gateway's req/s",
            http_notebook,
            "x",
            "≥ 10",
            None if http_notebook is None else http_notebook.median >= 10,
        ),
        Comparison(
            "grpc-web: CPU/call ÷ the same call as HTTP/JSON on the door",
            grpc_web,
            "x",
            "≤ 1.10",
            None if grpc_web is None else grpc_web.median <= 1.10,
        ),
    ]


def _decimals(value: float, unit: str) -> int:
    if unit == "x":
        return 2
    if unit == "ms":
        # Three significant digits or so: 0.79, 17.1, 236.
        return 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return 0


def _spread(spread: Spread | None, unit: str = "", scale: float = 1.0) -> str:
    if spread is None:
        return "-"
    digits = _decimals(spread.median * scale, unit)
    text = f"{spread.median * scale:.{digits}f}"
    if spread.rounds > 1:
        text += f" ({spread.low * scale:.{digits}f}-{spread.high * scale:.{digits}f})"
    return text


@dataclass(frozen=True)
class Scenario:
    """What one scenario of the report ran: its title and its paths in table order."""

    name: str
    title: str
    paths: tuple[str, ...]
    messages_per_call: int = 1
    """Reply messages of one call (a stream's): CPU per message is CPU per call over this."""


def _messages_per_stream(scenarios: Sequence[Scenario]) -> int | None:
    return next((s.messages_per_call for s in scenarios if s.name == STREAM), None)


COLUMNS = ("path", "req/s", "p50 ms", "p99 ms", "proxy CPU µs/call", "service CPU µs/call")
COMPARISON_COLUMNS = ("comparison (median of per-round values, min-max)", "value", "target", "")


def _path_rows(runs: Sequence[Run], scenario: Scenario) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for path in scenario.paths:
        stats = path_stats(runs, scenario.name, path)
        if stats is None:
            continue
        rows.append(
            (
                PATHS[path][0],
                _spread(stats.req_per_s),
                _spread(stats.p50_us, "ms", 1e-3),
                _spread(stats.p99_us, "ms", 1e-3),
                _spread(stats.proxy_cpu_us),
                _spread(stats.service_cpu_us),
            )
        )
    return rows


def _comparison_rows(runs: Sequence[Run], scenarios: Sequence[Scenario]) -> list[tuple[str, str, str, str]]:
    rows = []
    for item in comparisons(runs, _messages_per_stream(scenarios)):
        verdict = "" if item.meets is None else ("met" if item.meets else "NOT met")
        value = _spread(item.value, item.unit) + ("" if item.unit == "x" else f" {item.unit}")
        rows.append((item.name, value, item.target, verdict))
    return rows


def _heading(runs: Sequence[Run]) -> str:
    rounds = len({run.round for run in runs})
    plural = "" if rounds == 1 else "s"
    return f"Medians across {rounds} round{plural}, (min-max) in brackets; CPU per call of each process tree."


def table(runs: Sequence[Run], scenarios: Sequence[Scenario]) -> str:
    """The report: one table per scenario, medians (min-max across rounds), then the comparisons."""
    lines = [_heading(runs)]
    header = (
        f"{COLUMNS[0]:<29} {COLUMNS[1]:>17} {COLUMNS[2]:>18} {COLUMNS[3]:>18} "
        f"{COLUMNS[4]:>21} {COLUMNS[5]:>21}"
    )
    for scenario in scenarios:
        lines += ["", scenario.title, header, "-" * len(header)]
        for row in _path_rows(runs, scenario):
            lines.append(f"{row[0]:<29} {row[1]:>17} {row[2]:>18} {row[3]:>18} {row[4]:>21} {row[5]:>21}")
    lines += ["", f"{COMPARISON_COLUMNS[0]:<62} {'value':>20} {'target':>8}"]
    lines.append("-" * 92)
    for name, value, target, verdict in _comparison_rows(runs, scenarios):
        lines.append(f"{name:<62} {value:>20} {target:>8}  {verdict}".rstrip())
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    align = ["---" if n < right_from else "---:" for n in range(len(header))]
    return [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]


def markdown(runs: Sequence[Run], scenarios: Sequence[Scenario]) -> str:
    """The same report as :func:`table`, as Markdown tables."""
    lines = [_heading(runs)]
    for scenario in scenarios:
        rows = _path_rows(runs, scenario)
        if rows:
            lines += ["", f"**{scenario.title}**", "", *_markdown_table(COLUMNS, rows, 1)]
    lines += ["", *_markdown_table(COMPARISON_COLUMNS, _comparison_rows(runs, scenarios), 1)]
    return "\n".join(lines)


def as_json(runs: Sequence[Run], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """The summary, for the results file (the raw runs are stored beside it)."""
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        summary[scenario.name] = {
            path: asdict(stats)
            for path in scenario.paths
            if (stats := path_stats(runs, scenario.name, path)) is not None
        }
    summary["comparisons"] = [asdict(item) for item in comparisons(runs, _messages_per_stream(scenarios))]
    return summary
