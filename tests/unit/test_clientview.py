"""The clients' view (DESIGN 10), table-tested: what each kube-apiserver instance's aggregated
discovery says of the group/version, and the verdict that makes where the endpoints and the path
pass. Plain data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apiservice_operator.core.clientview import (
    V2_ACCEPT as V2,
)
from apiservice_operator.core.clientview import (
    ClientView,
    Document,
    Freshness,
    InstanceView,
    OpenAPI,
    ServerAnswer,
    freshness_of,
    group_versions,
    judge_apis,
    judge_openapi,
    openapi_paths,
    openapi_served,
)
from apiservice_operator.core.decide import AWAITING, decide
from apiservice_operator.core.decide.clients import DISCOVERY_STALE, OPENAPI_UNAVAILABLE
from apiservice_operator.core.model import Condition, ConditionTypes, ProbeResult, Resolution, Status, Target
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


def view(*states: Freshness | None, openapi: tuple[OpenAPI | None, ...] = (),
         server: tuple[ServerAnswer, ...] = ()) -> ClientView:
    apis = openapi or (None,) * len(states)
    return ClientView(tuple(InstanceView(i, s, (), "" if s else "timeout", o,
                                         "not in /openapi/v3" if o is OpenAPI.MISSING else "")
                            for i, s, o in zip((I1, I2), states, apis, strict=False)), server)


GV = "demo.example.com/v1"
APIS_503 = judge_apis("10.250.0.10:8443", 503, 0.01, "text/plain", None, GV)
APIS_SLOW = judge_apis("10.250.0.10:8443", 200, 7.0, V2, document(), GV)
APIS_FINE = judge_apis("10.250.0.10:8443", 200, 0.01, V2, document(), GV)
APIS_WITHOUT = judge_apis("10.250.0.10:8443", 200, 0.01, V2, document(group="other.example.com"), GV)
V3_503 = judge_openapi(Document.OPENAPI_V3, "10.250.0.10:8443", 503, 0.01, "text/plain")
V2_503 = judge_openapi(Document.OPENAPI_V2, "10.250.0.10:8443", 503, 0.01, "text/plain")
V3_404 = judge_openapi(Document.OPENAPI_V3, "10.250.0.10:8443", 404, 0.01, "text/plain")
V2_FINE = judge_openapi(Document.OPENAPI_V2, "10.250.0.10:8443", 200, 0.01, "application/json")
BOTH = (Freshness.CURRENT, Freshness.CURRENT)


PASSING = PathEvidence(via="instances", results=(PathResult(I1, PathOutcome.PASSED, "ok"),
                                                 PathResult(I2, PathOutcome.PASSED, "ok")),
                       kube_status=Status.TRUE, kube_message="all checks passed", kube_since=LONG_AGO)
ONE_CUT = PathEvidence(via="instances", results=(PathResult(I1, PathOutcome.PASSED, "ok"),
                                                 PathResult(I2, PathOutcome.UNREACHABLE, "timeout")),
                       kube_status=Status.TRUE, kube_message="all checks passed", kube_since=LONG_AGO)

JUST_CHANGED = PathEvidence(via="instances", results=PASSING.results, kube_status=Status.TRUE,
                            kube_message="all checks passed", kube_since=JUST_NOW)


@dataclass(frozen=True)
class Row:
    id: str
    clients: ClientView | None
    available: tuple[str, str]
    degraded: tuple[str, str]
    path: PathEvidence = PASSING
    direct_ok: bool = True
    has: tuple[str, ...] = ()
    before: tuple[Condition, ...] = ()


ROWS = [
    Row("Current on every instance: nothing to add", view(Freshness.CURRENT, Freshness.CURRENT),
        ("True", "Passed"), ("False", "AsExpected"), has=("aggregated discovery Current in 2/2 instances",)),
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
    Row("its /apis answers 503: quoted", view(Freshness.STALE, Freshness.STALE, server=(APIS_503,)),
        ("False", DISCOVERY_STALE), ("False", "Unavailable"),
        has=("/apis (v2 Accept) from 10.250.0.10:8443: 503 in <1s, text/plain", "Current in 0/2 instances")),
    Row("its /apis takes 7 s: quoted", view(Freshness.STALE, Freshness.STALE, server=(APIS_SLOW,)),
        ("False", DISCOVERY_STALE), ("False", "Unavailable"), has=("200 in 7s", "past kube-apiserver's 5 s")),
    Row("its v2 document lacks the group/version: quoted", view(Freshness.EMPTY, Freshness.EMPTY,
                                                                 server=(APIS_WITHOUT,)),
        ("False", DISCOVERY_STALE), ("False", "Unavailable"), has=("does not list demo.example.com/v1",)),
    Row("repaired, kube-apiserver's cache behind: awaiting, not blamed",
        view(Freshness.STALE, Freshness.STALE, server=(APIS_FINE,)), ("Unknown", AWAITING), ("Unknown", AWAITING),
        has=("has not caught up with its server yet", "lists demo.example.com/v1")),
    Row("repaired on one instance, the other behind: awaiting on Degraded",
        view(Freshness.CURRENT, Freshness.STALE, server=(APIS_FINE,)), ("True", "Passed"), ("Unknown", AWAITING)),
    Row("its server answers, kube-apiserver stale for over the grace: Stale after all",
        view(Freshness.STALE, Freshness.STALE, server=(APIS_FINE,)), ("False", DISCOVERY_STALE),
        ("False", "Unavailable"), has=("over 90 s though its server answers",),
        before=(Condition(TYPES.available, Status.UNKNOWN, AWAITING, "waiting", LONG_AGO),)),
    Row("still within the grace of our own waiting", view(Freshness.STALE, Freshness.STALE, server=(APIS_FINE,)),
        ("Unknown", AWAITING), ("Unknown", AWAITING),
        before=(Condition(TYPES.available, Status.UNKNOWN, AWAITING, "waiting", JUST_NOW),)),
    Row("OpenAPI missing on every instance: degraded, naming the server's answers",
        view(*BOTH, openapi=(OpenAPI.MISSING, OpenAPI.MISSING), server=(V3_503, V2_503)),
        ("True", "Passed"), ("True", OPENAPI_UNAVAILABLE),
        has=("2/2 kube-apiserver instances", "kubectl explain", "/openapi/v3 from 10.250.0.10:8443: 503",
             "/openapi/v2 from 10.250.0.10:8443: 503", "aggregated discovery Current in 2/2 instances")),
    Row("OpenAPI on one instance only", view(*BOTH, openapi=(OpenAPI.LISTED, OpenAPI.FAILING), server=(V3_503, V2_503)),
        ("True", "Passed"), ("True", OPENAPI_UNAVAILABLE), has=("1/2 kube-apiserver instances",)),
    Row("OpenAPI listed everywhere", view(*BOTH, openapi=(OpenAPI.LISTED, OpenAPI.LISTED)),
        ("True", "Passed"), ("False", "AsExpected"), has=("aggregated discovery Current in 2/2 instances",)),
    Row("OpenAPI v3 404 and v2 served, kube-apiserver behind: awaiting",
        view(*BOTH, openapi=(OpenAPI.MISSING, OpenAPI.MISSING), server=(V3_404, V2_FINE)),
        ("True", "Passed"), ("Unknown", AWAITING), has=("has not caught up with its server",)),
    Row("OpenAPI missing just after a change, the server not asked: not yet a verdict",
        view(*BOTH, openapi=(OpenAPI.MISSING, OpenAPI.MISSING)), ("True", "Passed"), ("False", "AsExpected"),
        path=JUST_CHANGED),
    Row("OpenAPI missing just after a change, the server's own answers 503: at once",
        view(*BOTH, openapi=(OpenAPI.MISSING, OpenAPI.MISSING), server=(V3_503, V2_503)),
        ("True", "Passed"), ("True", OPENAPI_UNAVAILABLE), path=JUST_CHANGED),
    Row("Stale just after a change, the server's own /apis answers 503: at once, no grace needed",
        view(Freshness.STALE, Freshness.STALE, server=(APIS_503,)), ("False", DISCOVERY_STALE),
        ("False", "Unavailable"), path=JUST_CHANGED),
    Row("OpenAPI missing for a new APIService whose server serves it: no claim yet",
        view(*BOTH, openapi=(OpenAPI.MISSING, OpenAPI.MISSING), server=(V3_404, V2_FINE)),
        ("True", "Passed"), ("False", "AsExpected"), path=JUST_CHANGED),
    Row("missing just after a change, the server answers fine: kube-apiserver has not read it yet",
        view(Freshness.MISSING, Freshness.MISSING, server=(APIS_FINE,)), ("Unknown", AWAITING),
        ("Unknown", AWAITING), path=JUST_CHANGED),
    Row("stale discovery and missing OpenAPI: discovery, the earlier hop, names it",
        view(Freshness.STALE, Freshness.STALE, openapi=(OpenAPI.MISSING, OpenAPI.MISSING), server=(APIS_503,)),
        ("False", DISCOVERY_STALE), ("False", "Unavailable")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_clients_view_decides_where_the_endpoints_and_the_path_pass(row: Row) -> None:
    direct = [ProbeResult(EP, True, 0.02)] if row.direct_ok else [ProbeResult(EP, False, 5.0, None, "timeout")]
    available, degraded = decide(Resolution(plan=PLAN), direct, list(row.before), NOW, TYPES, 5.0, row.path,
                                 clients=row.clients)
    assert (str(available.status), available.reason) == row.available, available.message
    assert (str(degraded.status), degraded.reason) == row.degraded, degraded.message
    for words in row.has:
        assert words in available.message + " | " + degraded.message


def test_an_instance_view_says_why_it_was_not_read() -> None:
    assert InstanceView(Target("10.0.0.9", 6443), None, (), "timeout").describe() == "10.0.0.9:6443: not read (timeout)"


def test_the_servers_own_apis_is_judged_as_kube_apiserver_takes_it() -> None:
    assert not APIS_503.serves and not APIS_SLOW.serves and not APIS_WITHOUT.serves and APIS_FINE.serves
    # 404, 500 or a v1 APIGroupList: kube-apiserver falls back to /apis/<group>/<version>
    assert judge_apis("e", 404, 0.01, "text/plain", None, GV).serves
    assert judge_apis("e", 200, 0.01, "application/json", {"kind": "APIGroupList"}, GV).serves
    assert not judge_apis("e", None, 8.0, "", None, GV, "no answer within 8 s").serves


def test_openapi_is_served_by_v3_or_by_v2_where_v3_is_404() -> None:
    v3_fine = judge_openapi(Document.OPENAPI_V3, "e", 200, 0.01, "application/json")
    assert openapi_served([v3_fine]) and openapi_served([V3_404, V2_FINE])
    assert not openapi_served([V3_503, V2_FINE]) and not openapi_served([V3_404, V2_503])


def test_openapi_paths_key_the_group_versions() -> None:
    root = {"paths": {"apis/demo.example.com/v1": {"serverRelativeURL": "/openapi/v3/apis/demo.example.com/v1?hash=A"},
                      "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=B"}, "version": {}, "apis": 7}}
    assert openapi_paths(root) == {GV: "/openapi/v3/apis/demo.example.com/v1?hash=A", "v1": "/openapi/v3/api/v1?hash=B"}
    assert openapi_paths([1, 2]) == {} and openapi_paths({"paths": None}) == {}
