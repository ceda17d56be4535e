"""The Grafana dashboard in dashboards/: every query reads series the gateway really exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.grpc_metrics import GRPC_CODES
from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.ops_support import KEY, gateway, get_user
from tests.support.processes import free_port

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grpc-gateway.json"
METRIC = re.compile(r"\b((?:grpc|process)_[a-z_]+)\b")
BY = re.compile(r"\bby \(([^)]*)\)")
SELECTOR = re.compile(r"\{[^}]*\}")
# A metric with its label matchers, and one matcher: name, operator, value.
SELECTED = re.compile(r"\b((?:grpc|process)_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-z_]+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# Prometheus adds it when it scrapes; a scrape of /metrics has none.
SCRAPE_LABELS = {"job"}

Sample = tuple[str, dict[str, str]]


def exported(port: int) -> tuple[dict[str, set[str]], list[Sample]]:
    """Every series name the gateway's /metrics has (families without samples yet included), with
    the labels seen on it; and every sample, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    names: dict[str, set[str]] = {}
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            samples.append((sample.name, dict(sample.labels)))
    return names, samples


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has panels"
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(found) >= 10
    return found


def matches(operator: str, wanted: str, label: str | None) -> bool:
    """Whether PromQL's ``label <operator> "wanted"`` holds (a missing label is the empty string)."""
    have = label or ""
    if operator in ("=~", "!~"):
        found = re.fullmatch(wanted, have) is not None  # PromQL anchors a regex at both ends
        return found if operator == "=~" else not found
    return (have == wanted) if operator == "=" else (have != wanted)


def check_selectors(expr: str, names: dict[str, set[str]], samples: list[Sample]) -> None:
    """Each ``metric{...}`` in ``expr`` that picks label values selects at least one exported
    series, and every value a matcher names for grpc_code is one the gateway can export. (A
    selector of ``job`` alone reads the whole family, which may have no series before an event.)"""
    for metric, body in SELECTED.findall(expr):
        matchers = [MATCHER.fullmatch(part) for part in body.split(",")]
        assert all(matchers), f'a matcher of {metric} is not label op "value" ({expr!r})'
        wanted = [m.groups() for m in matchers if m is not None and m.group(1) not in SCRAPE_LABELS]
        for label, operator, text in wanted:
            assert label in names[metric], f"{label!r} is not a label of {metric} ({expr!r})"
            if label == "grpc_code":
                spelt = text.split("|") if operator in ("=~", "!~") else [text]
                unknown = set(spelt) - set(GRPC_CODES.values())
                assert not unknown, f"grpc_code {sorted(unknown)} is never exported ({expr!r})"
        if not wanted:
            continue
        selected = [
            labels
            for name, labels in samples
            if name == metric and all(matches(op, text, labels.get(label)) for label, op, text in wanted)
        ]
        assert selected, f"{metric}{{{body}}} selects no series the gateway exports ({expr!r})"


async def test_every_query_reads_exported_series(services: Services, tmp_path: Path) -> None:
    # The recommendations' upstream is down: its calls fail Unavailable, upstream and to the caller.
    routes = {USERS: services.users, RECOMMENDATIONS: f"127.0.0.1:{free_port()}"}
    config = write_config(tmp_path, gateway_toml(routes))
    with gateway(config, metrics=True) as started:
        async with grpc.aio.insecure_channel(started.address) as channel:
            assert (await get_user(channel, 101, metadata=KEY))[0] == grpc.StatusCode.OK
            assert (await get_user(channel, 102, metadata=()))[0] == grpc.StatusCode.UNAUTHENTICATED
            for _ in range(5):  # the per-user rule's five, then a refusal
                await get_user(channel, 103, metadata=KEY)
            assert (await get_user(channel, 103, metadata=KEY))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            unrouted = channel.unary_unary("/shop.shoppers.v1.ShopService/GetShop")
            with pytest.raises(grpc.aio.AioRpcError):
                await unrouted(b"", metadata=KEY, timeout=5)
            down = channel.unary_unary(f"/{RECOMMENDATIONS}/GetRecommendations")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await down(b"\x08\x65", metadata=KEY, timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        names, samples = exported(started.metrics_port)
    for expr in queries():
        # Label names (grouping, selectors) look like metric names: leave them out first.
        used = METRIC.findall(SELECTOR.sub("", BY.sub("", expr)))
        assert used, f"no metric in {expr!r}"
        for name in used:
            assert name in names, f"the dashboard reads {name}, which the gateway does not export ({expr!r})"
        labels = set().union(*(names[name] for name in used))
        for grouping in BY.findall(expr):
            for label in (part.strip() for part in grouping.split(",")):
                if label != "le" and labels:  # a family with samples: its labels are known
                    assert label in labels, f"{label!r} is not a label of {used} ({expr!r})"
        check_selectors(expr, names, samples)


def test_the_selector_check_refuses_what_the_gateway_does_not_export() -> None:
    """The check itself: a selector of a value never exported, or misspelt, fails it."""
    names = {"grpc_server_handled_total": {"grpc_code", "grpc_method"}}
    samples: list[Sample] = [
        ("grpc_server_handled_total", {"grpc_code": "ResourceExhausted", "grpc_method": "M"})
    ]
    check_selectors(
        'x(grpc_server_handled_total{job=~"$job", grpc_code=~"Internal|ResourceExhausted"})', names, samples
    )
    for wrong in ('grpc_code="RESOURCE_EXHAUSTED"', 'grpc_code=~"Internal|Unavailable"', 'grpc_method="N"'):
        with pytest.raises(AssertionError):
            check_selectors(f"grpc_server_handled_total{{{wrong}}}", names, samples)
