"""The clients' view (DESIGN 10), table-tested: what each kube-apiserver instance's aggregated
discovery says of the group/version, and the verdict that makes where the endpoints and the path
pass. Plain data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apiservice_operator.core.clientview import ClientView, Freshness, InstanceView, freshness_of, group_versions
from apiservice_operator.core.decide import AWAITING, decide
from apiservice_operator.core.decide.clients import DISCOVERY_STALE
from apiservice_operator.core.model import ConditionTypes, ProbeResult, Resolution, Status, Target
from apiservice_operator.core.path import PathEvidence, PathOutcome, PathResult
from tests.unit.test_userpath import EP, I1, I2, PLAN

TYPES = ConditionTypes()
NOW = "2026-01-01T12:00:00Z"
LONG_AGO = "2026-01-01T11:00:00Z"
JUST_NOW = "2026-01-01T11:59:30Z"


def document(freshness: str | None = None, resources: tuple[str, ...] = ("widgets",),
             group: str = "demo.example.com") -> dict[str, object]:
    version: dict[str, object] = {"version": "v1", "resources": [{"resource": r} for r in resources]}
    if freshness:
        version["freshness"] = freshness
    return {"kind": "APIGroupDiscoveryList", "items": [{"metadata": {"name": group}, "versions": [version]}]}


@pytest.mark.parametrize(("doc", "own", "want"), [
    pytest.param(document(), ("widgets",), Freshness.CURRENT, id="current (freshness omitted)"),
    pytest.param(document("Current"), ("widgets",), Freshness.CURRENT, id="current"),
    pytest.param(document("Stale", ()), ("widgets",), Freshness.STALE, id="stale"),
    pytest.param(document(group="other.example.com"), ("widgets",), Freshness.MISSING, id="missing"),
    pytest.param(document(resources=()), ("widgets",), Freshness.EMPTY, id="listed without resources"),
    pytest.param(document(resources=()), (), Freshness.CURRENT, id="no resources anywhere"),
    pytest.param({"kind": "Status"}, ("widgets",), Freshness.MISSING, id="not a discovery list"),
    pytest.param({"items": [7, {"metadata": None}]}, ("widgets",), Freshness.MISSING, id="garbage items"),
])
def test_freshness_of_a_group_version(doc: dict[str, object], own: tuple[str, ...], want: Freshness) -> None:
    assert freshness_of(group_versions(doc), "demo.example.com/v1", own)[0] is want


def test_the_legacy_core_group_is_keyed_by_its_version() -> None:
    assert "v1" in group_versions({"items": [{"metadata": {"name": ""}, "versions": [{"version": "v1"}]}]})


def view(*states: Freshness | None) -> ClientView:
    return ClientView(tuple(InstanceView(i, s, (), "" if s else "timeout") for i, s in zip((I1, I2), states,
                                                                                              strict=False)))


PASSING = PathEvidence(via="instances", results=(PathResult(I1, PathOutcome.PASSED, "ok"),
                                                 PathResult(I2, PathOutcome.PASSED, "ok")),
                       kube_status=Status.TRUE, kube_message="all checks passed", kube_since=LONG_AGO)
ONE_CUT = PathEvidence(via="instances", results=(PathResult(I1, PathOutcome.PASSED, "ok"),
                                                 PathResult(I2, PathOutcome.UNREACHABLE, "timeout")),
                       kube_status=Status.TRUE, kube_message="all checks passed", kube_since=LONG_AGO)


@dataclass(frozen=True)
class Row:
    id: str
    clients: ClientView | None
    available: tuple[str, str]
    degraded: tuple[str, str]
    path: PathEvidence = PASSING
    direct_ok: bool = True
    has: tuple[str, ...] = ()


ROWS = [
    Row("Current on every instance: nothing to add", view(Freshness.CURRENT, Freshness.CURRENT),
        ("True", "Passed"), ("False", "AsExpected")),
    Row("not read anywhere: no claim", view(None, None), ("True", "Passed"), ("False", "AsExpected")),
    Row("Stale on every instance: clients cannot use it", view(Freshness.STALE, Freshness.STALE),
        ("False", DISCOVERY_STALE), ("False", "Unavailable"),
        has=("10.250.0.2:6443: Stale", "stale GroupVersion discovery", "root /apis", "2/2 kube-apiserver instances")),
    Row("missing on every instance", view(Freshness.MISSING, Freshness.MISSING), ("False", DISCOVERY_STALE),
        ("False", "Unavailable"), has=("missing",)),
    Row("listed without its resources", view(Freshness.EMPTY, None), ("False", DISCOVERY_STALE),
        ("False", "Unavailable"), has=("without the resources its server serves", "1/1")),
    Row("Stale on one instance: degraded, naming it", view(Freshness.CURRENT, Freshness.STALE),
        ("True", "Passed"), ("True", DISCOVERY_STALE), has=("10.250.0.3:6443: Stale", "1/2")),
    Row("an instance both cut and stale: the path comes first", view(Freshness.CURRENT, Freshness.STALE),
        ("True", "Passed"), ("True", "InstanceUnreachable"), path=ONE_CUT),
    Row("cut and stale while kube-apiserver's own Available flips (its instances overwrite it): no grace restarts",
        view(Freshness.CURRENT, Freshness.STALE), ("True", "Passed"), ("True", "InstanceUnreachable"),
        path=PathEvidence(via="instances", results=ONE_CUT.results, kube_status=Status.TRUE,
                          kube_message="all checks passed", kube_since=JUST_NOW)),
    Row("the server is down: the broken hop names it, not discovery", view(Freshness.STALE, Freshness.STALE),
        ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"), direct_ok=False,
        path=PathEvidence(via="instances", results=(PathResult(I1, PathOutcome.UNREACHABLE, "timeout"),),
                          kube_status=Status.FALSE, kube_message="timeout", kube_since=LONG_AGO)),
    Row("just recovered or new: kube-apiserver catches up within a minute", view(Freshness.STALE, Freshness.MISSING),
        ("Unknown", AWAITING), ("Unknown", AWAITING),
        path=PathEvidence(via="instances", results=PASSING.results, kube_status=Status.TRUE,
                          kube_message="all checks passed", kube_since=JUST_NOW), has=("has not caught up yet",)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_clients_view_decides_where_the_endpoints_and_the_path_pass(row: Row) -> None:
    direct = [ProbeResult(EP, True, 0.02)] if row.direct_ok else [ProbeResult(EP, False, 5.0, None, "timeout")]
    available, degraded = decide(Resolution(plan=PLAN), direct, [], NOW, TYPES, 5.0, row.path, clients=row.clients)
    assert (str(available.status), available.reason) == row.available, available.message
    assert (str(degraded.status), degraded.reason) == row.degraded, degraded.message
    for words in row.has:
        assert words in available.message + " | " + degraded.message


def test_an_instance_view_says_why_it_was_not_read() -> None:
    assert InstanceView(Target("10.0.0.9", 6443), None, (), "timeout").describe() == "10.0.0.9:6443: not read (timeout)"
