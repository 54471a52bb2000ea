"""The clients' view in the metrics: counted per instance, and the gauges the alert reads set only
while our verdict says so."""

from __future__ import annotations

from prometheus_client import generate_latest

from apiservice_operator.check.metrics import Metrics
from apiservice_operator.core.clientview import Freshness, OpenAPI
from apiservice_operator.core.model import Condition, Status
from tests.unit.test_clientview import view

NOW = "2026-01-01T12:00:00Z"


def sample(m: Metrics, line: str) -> float | None:
    for text in generate_latest(m.registry).decode().splitlines():
        if text.startswith(line + " "):
            return float(text.rsplit(" ", 1)[1])
    return None


def verdict(reason: str, degraded: str = "AsExpected") -> tuple[Condition, Condition]:
    status = Status.TRUE if reason == "Passed" else Status.FALSE
    return (Condition("x/Available", status, reason, "", NOW),
            Condition("x/Degraded", Status.TRUE if degraded != "AsExpected" else Status.FALSE, degraded, "", NOW))


def test_stale_instances_are_exported_while_the_verdict_says_discovery_stale() -> None:
    m = Metrics()
    stale = view(Freshness.STALE, Freshness.CURRENT, openapi=(OpenAPI.LISTED, OpenAPI.MISSING))
    m.observe_clients("v1.a", stale, *verdict("Passed", "DiscoveryStale"))
    assert sample(m, 'apiservice_operator_discovery_stale_instances{name="v1.a"}') == 1
    assert sample(m, 'apiservice_operator_openapi_unavailable_instances{name="v1.a"}') == 0
    assert sample(m, 'apiservice_operator_clients_view_total{document="discovery",outcome="stale"}') == 1
    assert sample(m, 'apiservice_operator_clients_view_total{document="openapi",outcome="missing"}') == 1
    # the same view while another hop names the verdict (or kube-apiserver may still catch up): 0
    m.observe_clients("v1.a", stale, *verdict("FailedDiscoveryCheck"))
    assert sample(m, 'apiservice_operator_discovery_stale_instances{name="v1.a"}') == 0
    m.observe_clients("v1.a", stale, *verdict("Passed", "OpenAPIUnavailable"))
    assert sample(m, 'apiservice_operator_openapi_unavailable_instances{name="v1.a"}') == 1


def test_an_apiservice_without_a_clients_view_or_gone_has_no_series() -> None:
    m = Metrics()
    m.observe_clients("v1.a", view(Freshness.STALE), *verdict("DiscoveryStale"))
    m.observe_clients("v1.b", view(Freshness.STALE), *verdict("DiscoveryStale"))
    m.observe_clients("v1.a", None, *verdict("Passed"))
    m.forget("v1.b")
    text = generate_latest(m.registry).decode()
    assert 'name="v1.a"' not in text and 'name="v1.b"' not in text
