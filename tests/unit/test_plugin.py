"""kubectl-apiservices' rows, from plain APIService dicts."""

from __future__ import annotations

import datetime

from apiservice_operator.core.clientview import Freshness
from apiservice_operator.core.decide import decide
from apiservice_operator.core.model import (
    Certificate,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Target,
)
from apiservice_operator.core.path import PathEvidence, classify
from apiservice_operator.plugin import render, row
from tests import builders
from tests.unit.test_clientview import PASSING, view

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
TYPES = ConditionTypes()
EP, I1, I2 = Target("10.0.0.1", 8443), Target("10.250.0.2", 6443), Target("10.250.0.3", 6443)
PLAN = ProbePlan((EP,), "/apis/demo.example.com/v1", "demo.example.com/v1", "demo.default.svc", None, False)


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T11:00:00Z"}


def with_conditions(*conditions: dict[str, str]) -> dict[str, object]:
    obj = builders.make_apiservice("demo.example.com", conditions=list(conditions))
    obj["metadata"]["creationTimestamp"] = "2026-01-01T11:55:00Z"
    return obj


def test_healthy_row_shows_latency_endpoints_and_both_verdicts() -> None:
    r = row(with_conditions(
        cond("Available", "True", "Passed"),
        cond(TYPES.available, "True", "Passed", "discovery passed on 2/2 endpoints in <1s"),
        cond(TYPES.degraded, "False", "AsExpected"),
    ), TYPES, NOW)
    assert (r["NAME"], r["SERVICE"], r["KUBE-APISERVER"], r["PROBED"], r["REASON"]) == (
        "v1.demo.example.com", "default/demo", "True", "True", "Passed")
    assert (r["LATENCY"], r["ENDPOINTS"], r["AGE"]) == ("<1s", "2/2", "5m")


def test_degraded_row_shows_the_degraded_reason() -> None:
    r = row(with_conditions(
        cond(TYPES.available, "True", "Passed", "discovery passed on 1/2 endpoints in <1s"),
        cond(TYPES.degraded, "True", "PartialFailure", "1/2 endpoints failed discovery: 10.0.0.2:443: bad status: 500"),
    ), TYPES, NOW)
    assert (r["PROBED"], r["REASON"], r["ENDPOINTS"]) == ("Degraded", "PartialFailure", "1/2")
    assert "bad status: 500" in r["MESSAGE"]


def test_failed_row_counts_no_endpoint_ok() -> None:
    r = row(with_conditions(cond(TYPES.available, "False", "FailedDiscoveryCheck",
                                 "failing or missing response from 3/3 endpoints: ...")), TYPES, NOW)
    assert (r["PROBED"], r["ENDPOINTS"], r["KUBE-APISERVER"]) == ("False", "0/3", "<none>")


def test_local_apiservice_row() -> None:
    obj = builders.make_apiservice("apps", service_name=None, conditions=[cond("Available", "True", "Local")])
    r = row(obj, TYPES, NOW)
    assert (r["SERVICE"], r["KUBE-APISERVER"], r["PROBED"]) == ("Local", "True", "<none>")


def test_colour_only_when_asked() -> None:
    rows = [row(with_conditions(cond(TYPES.available, "False", "ServiceNotFound")), TYPES, NOW)]
    assert "\x1b[" not in render(rows, wide=False, colour=False)
    assert "\x1b[31m" in render(rows, wide=False, colour=True)
    assert "MESSAGE" in render(rows, wide=True, colour=False)


def _decided(through: list[ProbeResult], direct: list[ProbeResult]) -> dict[str, object]:
    """Conditions as decide writes them, so the column reads the real message, not a copy of it."""
    evidence = PathEvidence("instances", tuple(classify(r) for r in through), kube_status=Status.TRUE)
    available, degraded = decide(Resolution(plan=PLAN), direct, [], "2026-01-01T11:00:00Z", TYPES, 5.0, evidence)
    return with_conditions(available.to_api(), degraded.to_api())


def test_path_column_counts_the_kube_apiserver_instances_that_served() -> None:
    ok = [ProbeResult(EP, True, 0.01, status_code=200)]
    one_cut = row(_decided([ProbeResult(I1, False, 5.0, ErrorKind.TIMEOUT, "timeout"),
                            ProbeResult(I2, True, 0.02, status_code=200)], ok), TYPES, NOW)
    assert (one_cut["PATH"], one_cut["PROBED"], one_cut["REASON"]) == ("1/2", "Degraded", "InstanceUnreachable")
    assert "10.250.0.2:6443: timeout" in one_cut["MESSAGE"]
    all_cut = row(_decided([ProbeResult(I1, False, 5.0, ErrorKind.TIMEOUT, "timeout"),
                            ProbeResult(I2, False, 5.0, ErrorKind.TIMEOUT, "timeout")], ok), TYPES, NOW)
    assert (all_cut["PATH"], all_cut["PROBED"], all_cut["REASON"]) == ("0/2", "False", "ControlPlaneUnreachable")
    assert "PATH" in render([one_cut, all_cut], wide=False, colour=False)


def test_path_column_is_empty_where_the_path_was_not_probed() -> None:
    r = row(with_conditions(cond(TYPES.available, "True", "Passed", "discovery passed on 2/2 endpoints in <1s")),
            TYPES, NOW)
    assert r["PATH"] == ""


def test_wide_shows_the_days_until_the_first_certificate_ends() -> None:
    soon = Certificate("CN=demo.default.svc", "CN=ca", "2026-01-04T12:00:00Z")
    probes = [ProbeResult(EP, True, 0.01, None, "ok", 200, "", (soon,))]
    available, degraded = decide(Resolution(plan=PLAN), probes, [], "2026-01-01T12:00:00Z", TYPES, 5.0)
    r = row(with_conditions(available.to_api(), degraded.to_api()), TYPES, NOW)
    assert (r["REASON"], r["CERT"]) == ("CertificateExpiring", "3d")
    later = Certificate("CN=demo.default.svc", "CN=ca", "2026-12-31T12:00:00Z")
    available, degraded = decide(Resolution(plan=PLAN), [ProbeResult(EP, True, 0.01, None, "ok", 200, "", (later,))],
                                 [], "2026-01-01T12:00:00Z", TYPES, 5.0)
    assert row(with_conditions(available.to_api(), degraded.to_api()), TYPES, NOW)["CERT"] == "364d"
    assert "CERT" in render([r], wide=True, colour=False) and "CERT" not in render([r], wide=False, colour=False)


def test_wide_counts_the_namespaces_an_unavailable_api_keeps_from_being_deleted() -> None:
    r = row(with_conditions(cond(TYPES.available, "False", "FailedDiscoveryCheck",
                                 "failing ...; blocking deletion of 3 namespaces: a, b, c")), TYPES, NOW)
    assert r["BLOCKING"] == "3"
    assert row(with_conditions(cond(TYPES.available, "True", "Passed", "ok")), TYPES, NOW)["BLOCKING"] == ""


def test_wide_shows_in_how_many_instances_discovery_is_current() -> None:
    current, stale = Freshness.CURRENT, Freshness.STALE
    for states, reason, want in (((current, current), "Passed", "2/2"), ((current, stale), "DiscoveryStale", "1/2"),
                                 ((stale, stale), "DiscoveryStale", "0/2")):
        available, degraded = decide(Resolution(plan=PLAN), [ProbeResult(EP, True, 0.01)], [], "2026-01-01T12:00:00Z",
                                     TYPES, 5.0, PASSING, clients=view(*states))
        r = row(with_conditions(available.to_api(), degraded.to_api()), TYPES, NOW)
        assert (r["DISCOVERY"], r["REASON"]) == (want, reason), (available.message, degraded.message)
        assert r["PATH"] == "2/2" and r["LATENCY"] == ("" if want == "0/2" else "<1s")
    assert "DISCOVERY" in render([r], wide=True, colour=False) and "DISCOVERY" not in render([r], wide=False,
                                                                                           colour=False)
