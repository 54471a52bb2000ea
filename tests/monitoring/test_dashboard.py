"""The Grafana dashboard's every query, run by a real Prometheus that scrapes the operator and
kube-apiserver of the local control plane while a healthy, a down and a half-broken aggregated API
are registered: each must return data, also with one APIService picked in $name. The same
Prometheus loads the shipped rules and must evaluate every one of them without an error."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.cluster.prometheus import (
    DASHBOARD,
    MONITORING,
    RULE_MANIFEST,
    Prometheus,
    config,
    control_plane_targets,
    panel_queries,
    panels,
    rule_groups,
    substitute,
)

OURS, OURS_DEGRADED, THEIRS = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", "Available"
SCRAPE_INTERVAL = "2s"
# what Grafana would put in: $__rate_interval is at least four scrape intervals (kube-apiserver's
# big /metrics is scraped at 5s here); $__range is the dashboard's time range
GRAFANA_VALUES = {"__rate_interval": "20s", "__interval": "2s", "__range": "5m"}
# the data can take this long to appear on a loaded 2-core machine; a healthy run needs ~10 s
DATA_TIMEOUT = 90


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


# --- the file itself (no cluster) ----------------------------------------------------------------
def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    found = list(panels(dashboard()))
    assert found
    for panel in found:
        if panel.get("type") == "row":
            continue
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target.get("expr"), f"panel {panel['title']!r} target {target.get('refId')} has no expr"


def test_every_variable_a_query_uses_is_defined_or_grafanas_own() -> None:
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    values = {**dict.fromkeys(defined, "x"), **GRAFANA_VALUES}
    for q in panel_queries(board):
        substitute(q.expr, values)  # raises on a variable nobody defines


def test_substitute_knows_grafanas_variable_syntaxes() -> None:
    assert substitute('x{a=~"$name", b="${name}", c="${name:regex}", d="[[name]]"}[$__range]',
                      {"name": "n", "__range": "5m"}) == 'x{a=~"n", b="n", c="n", d="n"}[5m]'
    with pytest.raises(KeyError):
        substitute("x{a=~\"$nmae\"}", {"name": "n"})


# --- against the real thing ----------------------------------------------------------------------
@pytest.mark.cluster
def test_kustomize_makes_the_dashboard_configmap_from_the_one_json_file(control_plane: ControlPlane) -> None:
    docs = list(yaml.safe_load_all(control_plane.kubectl("kustomize", str(MONITORING)).stdout))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "apiservice-operator"
    assert cm["data"] == {"apiservice-operator.json": DASHBOARD.read_text()}


@pytest.fixture
def samples(aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess) -> dict[str, AggregatedAPI]:
    """Healthy; down after being available (an outage, also in kube-apiserver's eyes: its counter
    counts only Available True -> False); half-broken (one of two endpoints answers 500). Every
    metric of the dashboard has something to show then."""
    apis = {kind: aggregated_api(servers=servers, service=kind)
            for kind, servers in (("healthy", 1), ("down", 1), ("half-broken", 2))}
    for api in apis.values():
        api.register_service()
        api.write_slice()
        api.register_apiservice()
    for api in apis.values():
        wait_conditions(api, {OURS: ("True", "Passed")}, 30)
    wait_conditions(apis["down"], {THEIRS: ("True", "Passed")}, 60)
    apis["down"].stop()
    apis["half-broken"].servers[0].set_state(mode="status", status=500)
    wait_conditions(apis["down"], {OURS: ("False", "FailedDiscoveryCheck")}, 30)
    wait_conditions(apis["half-broken"], {OURS_DEGRADED: ("True", "PartialFailure")}, 30)
    # our status write makes kube-apiserver re-check at once (DESIGN 6b)
    wait_conditions(apis["down"], {THEIRS: ("False", "FailedDiscoveryCheck")}, 60)
    return apis


@pytest.fixture
def prometheus(control_plane: ControlPlane, operator_port: int, prometheus_binary: str,
               tmp_path: Path) -> Iterator[Prometheus]:
    targets = control_plane_targets(f"127.0.0.1:{operator_port}", f"127.0.0.1:{control_plane.port}",
                                    control_plane.workdir / "pki")
    cfg = config(targets, scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{free_port()}", cfg,
                      rules=rule_groups(RULE_MANIFEST.read_text()), binary=prometheus_binary)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()
        assert not prom.alive()


def empty_queries(prom: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    return [f"{panel}: {expr}" for panel, expr in queries if not prom.query(expr)]


@pytest.mark.cluster
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
        samples: dict[str, AggregatedAPI], prometheus: Prometheus) -> None:
    board = dashboard()
    queries: list[tuple[str, str]] = []
    # All (Grafana's allValue), and the outage picked alone: the per-APIService panels must show it
    for picked in (".+", samples["down"].name):
        values = {"name": picked, **GRAFANA_VALUES}
        queries += [(f"{q.panel} [{q.ref}] name={picked}", substitute(q.expr, values)) for q in panel_queries(board)]
    assert len(queries) >= 2 * 15

    deadline = time.monotonic() + DATA_TIMEOUT
    missing = empty_queries(prometheus, queries)
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = empty_queries(prometheus, missing_pairs(queries, missing))
    assert prometheus.targets_up() == {"apiservice-operator": "up", "kube-apiserver": "up"}
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)

    # the $name variable's own query lists the samples
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "name"]
    query = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"])
    assert query, variable["query"]
    metric, label = query.groups()
    names = prometheus.api(f"label/{label}/values", **{"match[]": metric})
    assert {a.name for a in samples.values()} <= set(names)
    # both views of the down sample agree that it is down
    for metric in ("apiservice_operator_unavailable_apiservice", "aggregator_unavailable_apiservice"):
        [sample] = prometheus.query(f'max({metric}{{name="{samples["down"].name}"}})')
        assert sample["value"][1] == "1", metric

    # every shipped rule evaluated against this data without an error
    health = {}
    deadline = time.monotonic() + DATA_TIMEOUT
    while time.monotonic() < deadline:
        health = prometheus.rule_health()
        if health and all(h == "ok" for h in health.values()):
            break
        time.sleep(1)
    assert health and all(h == "ok" for h in health.values()), health


def missing_pairs(queries: list[tuple[str, str]], missing: list[str]) -> list[tuple[str, str]]:
    left = set(missing)
    return [(p, e) for p, e in queries if f"{p}: {e}" in left]
