"""Medians across rounds and the ratios of the report, from made-up runs."""

from __future__ import annotations

import pytest

from bench.measure import H2LOAD_CPU, OTHER_CPU, Run
from bench.report import (
    DIRECT,
    ENVOY,
    FLOOR,
    GATEWAY,
    GATEWAY_AIO,
    GATEWAY_NO_LIMITER,
    NGINX,
    SERVICE,
    STREAM,
    UNARY,
    YARDSTICK,
    Scenario,
    Spread,
    as_json,
    comparisons,
    markdown,
    path_stats,
    proxy_cpu_ratio,
    table,
)

REQUESTS = 1000


def run(
    round_number: int,
    scenario: str,
    path: str,
    req_per_s: float,
    cpu_us: dict[str, float],
    p99_us: float = 3000.0,
) -> Run:
    seconds = REQUESTS / req_per_s
    cpu = {name: us * REQUESTS / 1e6 for name, us in cpu_us.items()}
    return Run(
        round=round_number,
        scenario=scenario,
        path=path,
        load="-c4 -m8 -n1000",
        requests=REQUESTS,
        seconds=seconds,
        wall_seconds=seconds + 0.01,
        req_per_s=req_per_s,
        p50_us=1000.0 * round_number,
        p99_us=p99_us,
        cpu_seconds={**cpu, H2LOAD_CPU: 0.01, OTHER_CPU: 0.0},
        data_bytes=22 * REQUESTS,
        header_bytes=0,
        quiet_wait_seconds=0.0,
    )


def unary_rounds() -> list[Run]:
    runs = []
    for n, (gateway_us, yardstick_us) in enumerate([(400, 500), (450, 500), (600, 500)], start=1):
        runs += [
            run(n, UNARY, DIRECT, 3000, {SERVICE: 250}),
            run(n, UNARY, YARDSTICK, 2000, {YARDSTICK: yardstick_us, SERVICE: 260}),
            run(n, UNARY, GATEWAY, 2500, {GATEWAY: gateway_us, SERVICE: 260}),
            run(n, UNARY, GATEWAY_NO_LIMITER, 2600, {GATEWAY_NO_LIMITER: gateway_us - 30, SERVICE: 260}),
            run(n, UNARY, GATEWAY_AIO, 1500, {GATEWAY_AIO: gateway_us * 2, SERVICE: 260}),
            run(n, STREAM, DIRECT, 30, {SERVICE: 20000}),
            run(n, STREAM, GATEWAY, 20, {GATEWAY: 40000, SERVICE: 25000}),
        ]
    return runs


def test_spread_is_median_and_range() -> None:
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)


def test_path_stats_are_medians_across_rounds() -> None:
    stats = path_stats(unary_rounds(), UNARY, GATEWAY)
    assert stats is not None
    assert stats.proxy_cpu_us is not None
    cpu = stats.proxy_cpu_us
    assert (cpu.median, cpu.low, cpu.high, cpu.rounds) == pytest.approx((450, 400, 600, 3))
    assert stats.service_cpu_us.median == pytest.approx(260)
    assert stats.p50_us == Spread(2000.0, 1000.0, 3000.0, 3)
    assert path_stats(unary_rounds(), UNARY, "nowhere") is None


def test_comparisons_pair_runs_of_the_same_round() -> None:
    found = {item.name: item for item in comparisons(unary_rounds())}
    cpu = found["unary: gateway CPU/call ÷ yardstick CPU/call"]
    assert cpu.value is not None
    assert cpu.value.median == pytest.approx(0.9)
    assert cpu.meets is False
    rps = found["unary: gateway req/s ÷ yardstick req/s"]
    assert rps.value is not None
    assert rps.value.median == pytest.approx(1.25)
    assert rps.meets is True
    # The service's 260 µs and h2load's 10 µs a call allow 3704 req/s: 1.85 times the yardstick's 2000.
    ceiling = found["unary: ceiling of that ratio (CPU 0: service + h2load)"]
    assert ceiling.value is not None
    assert ceiling.value.median == pytest.approx(1e6 / 270 / 2000)
    limiter = found["unary: rate limiter CPU/call (gateway with minus without rules)"]
    assert limiter.value is not None
    assert limiter.value.median == pytest.approx(30)
    # Informational, no target: 800/500, 900/500, 1200/500.
    aio = found["unary: gateway (aio engine) CPU/call ÷ yardstick CPU/call"]
    assert aio.value is not None
    assert (aio.value.median, aio.value.low, aio.value.high) == pytest.approx((1.8, 1.6, 2.4))
    assert (aio.target, aio.meets) == ("", None)
    stream = found["stream: gateway CPU/call ÷ service CPU/call, direct"]
    assert stream.value is not None
    assert stream.value.median == pytest.approx(2.0)
    same = found["stream: gateway CPU/call ÷ service CPU/call, same calls"]
    assert same.value is not None
    assert same.value.median == pytest.approx(1.6)
    # No latency runs were made: those comparisons have no value.
    assert found["-c1 -m1: p50 added by the gateway over a direct call"].value is None


def test_table_shows_every_path_that_ran() -> None:
    paths = (DIRECT, YARDSTICK, GATEWAY, GATEWAY_NO_LIMITER, GATEWAY_AIO)
    text = table(unary_rounds(), [Scenario(UNARY, "Unary", paths)])
    assert "gateway, no rate limit rules" in text
    assert "gateway, aio engine" in text
    assert "900 (800-1200)" in text
    assert "unary: gateway (aio engine) CPU/call ÷ yardstick CPU/call" in text
    assert "450 (400-600)" in text
    assert "NOT met" in text


def test_as_json_has_every_path_of_a_scenario() -> None:
    summary = as_json(unary_rounds(), [Scenario(UNARY, "Unary", (DIRECT, GATEWAY, GATEWAY_AIO))])
    assert set(summary[UNARY]) == {DIRECT, GATEWAY, GATEWAY_AIO}
    assert summary[UNARY][GATEWAY_AIO]["proxy_cpu_us"]["median"] == pytest.approx(900)


def anchor_rounds() -> list[Run]:
    """Three rounds of the gateway (its default engine), the aio engine, Envoy and nginx; each round's
    ratio differs, so that a median of ratios is told apart from a ratio of medians."""
    runs = []
    rounds = [
        # gateway, aio, Envoy, nginx CPU µs per call; gateway and Envoy p99 µs; stream CPU µs per call
        (100, 600, 200, 80, 4000, 5000, 9000, 10000),
        (180, 640, 150, 90, 6000, 4000, 12000, 10000),
        (120, 560, 240, 100, 5000, 5000, 10000, 8000),
    ]
    for n, (gateway, aio, envoy, nginx, gateway_p99, envoy_p99, gateway_stream, envoy_stream) in enumerate(
        rounds, start=1
    ):
        runs += [
            run(n, UNARY, YARDSTICK, 2000, {YARDSTICK: 500, SERVICE: 260}),
            run(n, UNARY, GATEWAY, 3000, {GATEWAY: gateway, SERVICE: 250}, gateway_p99),
            run(n, UNARY, GATEWAY_AIO, 1500, {GATEWAY_AIO: aio, SERVICE: 260}),
            run(n, UNARY, ENVOY, 3000, {ENVOY: envoy, SERVICE: 250}, envoy_p99),
            run(n, UNARY, NGINX, 3200, {NGINX: nginx, SERVICE: 250}),
            run(n, STREAM, DIRECT, 30, {SERVICE: 20000}),
            run(n, STREAM, GATEWAY, 30, {GATEWAY: gateway_stream, SERVICE: 21000}),
            run(n, STREAM, ENVOY, 30, {ENVOY: envoy_stream, SERVICE: 21000}),
        ]
    return runs


def test_proxy_cpu_ratio_takes_each_paths_own_forwarder() -> None:
    gateway = run(1, UNARY, GATEWAY, 3000, {GATEWAY: 120, ENVOY: 1})
    envoy = run(1, UNARY, ENVOY, 3000, {ENVOY: 150, GATEWAY: 1})
    assert proxy_cpu_ratio(gateway, envoy) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no forwarder"):
        proxy_cpu_ratio(gateway, run(1, UNARY, DIRECT, 3000, {SERVICE: 200}))


def test_gateway_against_envoy_is_the_median_of_each_rounds_ratio() -> None:
    found = {item.name: item for item in comparisons(anchor_rounds(), messages_per_stream=1000)}
    cpu = found["unary: gateway CPU/call ÷ Envoy CPU/call"]
    assert cpu.value is not None
    # 100/200, 180/150, 120/240: the median of the ratios is 0.5 (a ratio of medians would be 0.6).
    assert (cpu.value.median, cpu.value.low, cpu.value.high, cpu.value.rounds) == pytest.approx(
        (0.5, 0.5, 1.2, 3)
    )
    assert (cpu.target, cpu.meets) == ("≤ 0.80", True)
    nginx = found["unary: gateway CPU/call ÷ nginx CPU/call (stretch)"]
    assert nginx.value is not None
    # 100/80, 180/90, 120/100
    assert nginx.value.median == pytest.approx(1.25)
    assert (nginx.target, nginx.meets) == ("≤ 1.20", False)
    p99 = found["unary: gateway p99 ÷ Envoy p99, same load"]
    assert p99.value is not None
    # 4000/5000, 6000/4000, 5000/5000
    assert (p99.value.median, p99.value.low, p99.value.high) == pytest.approx((1.0, 0.8, 1.5))
    assert (p99.target, p99.meets) == ("≤ 1.20", True)
    stream = found["stream: gateway CPU per message ÷ Envoy's"]
    assert stream.value is not None
    # 9000/10000, 12000/10000, 10000/8000: per message as per call, the same 1000 messages each.
    assert stream.value.median == pytest.approx(1.2)
    assert (stream.target, stream.meets) == ("≤ 1.00", False)
    per_message = found["stream: gateway CPU per message"]
    assert per_message.value is not None
    assert per_message.value.median == pytest.approx(10.0)
    assert per_message.unit == "µs"
    envoy = found["stream: Envoy CPU per message"]
    assert envoy.value is not None
    assert envoy.value.median == pytest.approx(10.0)
    # nginx ran no stream: no CPU per message of its own.
    assert "stream: nginx CPU per message" not in found


def test_aio_is_shown_beside_the_anchors_without_a_target() -> None:
    found = {item.name: item for item in comparisons(anchor_rounds())}
    aio = found["unary: gateway (aio engine) CPU/call ÷ Envoy CPU/call"]
    assert aio.value is not None
    # 600/200, 640/150, 560/240
    assert (aio.value.median, aio.value.low, aio.value.high) == pytest.approx((3.0, 560 / 240, 640 / 150))
    assert (aio.target, aio.meets) == ("", None)
    # Without the messages of a stream, no CPU per message is shown.
    assert "stream: gateway CPU per message" not in found
    # The yardstick's ratios are still there, on the same gateway: 100/500, 180/500, 120/500.
    yardstick = found["unary: gateway CPU/call ÷ yardstick CPU/call"]
    assert yardstick.value is not None
    assert yardstick.value.median == pytest.approx(0.24)
    assert (yardstick.target, yardstick.meets) == ("≤ 0.80", True)


def test_the_floor_splits_the_gateways_cost_in_each_round() -> None:
    # The floor's CPU per call in each round: the gateway's is 100, 180 and 120, Envoy's 200, 150, 240.
    floors = (60, 90, 70)
    runs = [
        *anchor_rounds(),
        *(run(n, UNARY, FLOOR, 3100, {FLOOR: us, SERVICE: 250}) for n, us in enumerate(floors, start=1)),
    ]
    found = {item.name: item for item in comparisons(runs)}
    python = found["unary: the gateway's Python per call (gateway minus floor)"]
    assert python.value is not None
    # 100-60, 180-90, 120-70
    assert (python.value.median, python.value.low, python.value.high) == pytest.approx((50, 40, 90))
    assert (python.unit, python.target, python.meets) == ("µs", "", None)
    floor = found["unary: data plane floor CPU/call ÷ Envoy CPU/call"]
    assert floor.value is not None
    # 60/200, 90/150, 70/240
    assert floor.value.median == pytest.approx(0.3)
    # A run without the floor shows neither.
    without = {item.name: item for item in comparisons(anchor_rounds())}
    assert without["unary: the gateway's Python per call (gateway minus floor)"].value is None


def test_each_comparison_is_named_once_and_for_engines_that_exist() -> None:
    names = [item.name for item in comparisons(anchor_rounds(), messages_per_stream=1000)]
    assert len(names) == len(set(names))
    assert [name for name in names if "core" in name or "native" in name] == []
    # The gateway's own rows name no engine (its default); the aio engine's say so.
    assert [name for name in names if "engine" in name] == [
        "unary: gateway (aio engine) CPU/call ÷ Envoy CPU/call",
        "unary: gateway (aio engine) CPU/call ÷ yardstick CPU/call",
    ]


def test_without_nginx_its_ratio_has_no_value() -> None:
    runs = [r for r in anchor_rounds() if r.path != NGINX]
    found = {item.name: item for item in comparisons(runs)}
    nginx = found["unary: gateway CPU/call ÷ nginx CPU/call (stretch)"]
    assert (nginx.value, nginx.meets) == (None, None)
    assert found["unary: gateway CPU/call ÷ Envoy CPU/call"].value is not None


def test_table_and_markdown_show_the_anchors_and_their_verdicts() -> None:
    scenarios = [
        Scenario(UNARY, "Unary", (ENVOY, NGINX, GATEWAY, GATEWAY_AIO, YARDSTICK)),
        Scenario(STREAM, "Stream, 1000 messages", (DIRECT, ENVOY, GATEWAY), 1000),
    ]
    text = table(anchor_rounds(), scenarios)
    assert "gateway, aio engine" in text
    assert "Envoy" in text
    assert "0.50 (0.50-1.20)   ≤ 0.80  met" in text
    assert "stream: Envoy CPU per message" in text
    document = markdown(anchor_rounds(), scenarios)
    lines = document.splitlines()
    assert "| path | req/s | p50 ms | p99 ms | proxy CPU µs/call | service CPU µs/call |" in lines
    assert "|---|---:|---:|---:|---:|---:|" in lines
    # The gateway's median CPU (120 µs, 100-180) in its row, the aio engine's (600 µs) in its own.
    assert any(line.startswith("| gateway |") and "| 120 (100-180) |" in line for line in lines)
    assert any(line.startswith("| gateway, aio engine |") and "| 600 (560-640) |" in line for line in lines)
    assert "**Stream, 1000 messages**" in lines
    assert "| unary: gateway CPU/call ÷ Envoy CPU/call | 0.50 (0.50-1.20) | ≤ 0.80 | met |" in lines
    assert "| stream: gateway CPU per message ÷ Envoy's | 1.20 (0.90-1.25) | ≤ 1.00 | NOT met |" in lines
    # Every row of a table has as many cells as its header.
    for line in lines:
        if line.startswith("| path |") or line.startswith("| gateway"):
            assert line.count(" | ") == 5


def test_as_json_has_the_anchor_comparisons() -> None:
    scenarios = [
        Scenario(UNARY, "Unary", (ENVOY, GATEWAY)),
        Scenario(STREAM, "Stream", (ENVOY,), 1000),
    ]
    summary = as_json(anchor_rounds(), scenarios)
    names = {item["name"]: item for item in summary["comparisons"]}
    assert names["unary: gateway CPU/call ÷ Envoy CPU/call"]["value"]["median"] == pytest.approx(0.5)
    assert names["stream: Envoy CPU per message"]["unit"] == "µs"
