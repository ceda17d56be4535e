"""Medians across rounds and the ratios of the report, from made-up runs."""

from __future__ import annotations

import pytest

from bench.measure import H2LOAD_CPU, OTHER_CPU, Run
from bench.report import (
    DIRECT,
    GATEWAY,
    GATEWAY_AIO,
    GATEWAY_NO_LIMITER,
    SERVICE,
    STREAM,
    UNARY,
    YARDSTICK,
    Scenario,
    Spread,
    as_json,
    comparisons,
    path_stats,
    table,
)

REQUESTS = 1000


def run(round_number: int, scenario: str, path: str, req_per_s: float, cpu_us: dict[str, float]) -> Run:
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
        p99_us=3000.0,
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
