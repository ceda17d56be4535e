"""The Grafana dashboard in dashboards/: every query reads series the gateway really exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.ops_support import KEY, gateway, get_user

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grpc-gateway.json"
METRIC = re.compile(r"\b((?:grpc|process)_[a-z_]+)\b")
BY = re.compile(r"\bby \(([^)]*)\)")
SELECTOR = re.compile(r"\{[^}]*\}")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported(port: int) -> dict[str, set[str]]:
    """Every series name the gateway's /metrics has (families without samples yet included), with
    the labels seen on it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has panels"
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(found) >= 10
    return found


async def test_every_query_reads_exported_series(services: Services, tmp_path: Path) -> None:
    config = write_config(tmp_path, gateway_toml(services.routes))
    with gateway(config, metrics=True) as started:
        async with grpc.aio.insecure_channel(started.address) as channel:
            assert (await get_user(channel, 101, metadata=KEY))[0] == grpc.StatusCode.OK
            assert (await get_user(channel, 102, metadata=()))[0] == grpc.StatusCode.UNAUTHENTICATED
        names = exported(started.metrics_port)
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
