"""resolve + decide, table-tested like kube-aggregator's TestSync: one row per check and edge.

Each row is plain data in (APIService, Service, EndpointSlices, probe outcomes) and our two
conditions out. Probe outcomes are given per target endpoint: the prober is not involved.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pytest

from apiservice_operator.core.decide import changed, decide, latency_bucket, our_conditions
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbeResult,
    Resolution,
    Status,
    Target,
)
from apiservice_operator.core.resolve import resolve
from tests.builders import CA_PEM as TEST_CA_PEM
from tests.builders import make_apiservice, make_endpoint, make_service, make_slice

TYPES = ConditionTypes()
NOW, EARLIER = "2026-01-01T12:00:00Z", "2026-01-01T11:00:00Z"
BUDGET = 5.0
CA_PEM = TEST_CA_PEM

OK = ("ok", 0.01)


@dataclass(frozen=True)
class Row:
    id: str
    apiservice: dict[str, Any] = field(default_factory=lambda: make_apiservice(ca_bundle=CA_PEM))
    service: dict[str, Any] | None = field(default_factory=make_service)
    slices: list[dict[str, Any]] = field(default_factory=lambda: [make_slice(endpoints=[make_endpoint("10.0.0.1")])])
    # endpoint -> ("ok", latency) | (ErrorKind, detail)
    probes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    available: tuple[str, str] = ("True", "Passed")
    degraded: tuple[str, str] = ("False", "AsExpected")
    message_has: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None


def run(row: Row, previous: list[Condition] | None = None) -> tuple[Resolution, Condition, Condition]:
    resolution = resolve(row.apiservice, row.service, row.slices)
    probes = []
    if resolution.plan is not None:
        for target in resolution.plan.targets:
            outcome, detail = row.probes.get(target.endpoint, OK)
            if outcome == "ok":
                probes.append(ProbeResult(target, True, float(detail)))
            else:
                probes.append(ProbeResult(target, False, 0.01, outcome, str(detail)))
    available, degraded = decide(resolution, probes, previous or [], NOW, TYPES, BUDGET)
    return resolution, available, degraded


ROWS = [
    Row("local APIService needs no probe",
        apiservice=make_apiservice("apps", service_name=None), available=("True", "Local"),
        degraded=("False", "Local"), message_has=("Local APIServices are always available",), targets=()),
    Row("service missing", service=None, available=("False", "ServiceNotFound"),
        degraded=("False", "Unavailable"), message_has=('service/demo in "default" is not present',), targets=()),
    Row("service port missing",
        service=make_service(ports=[{"name": "https", "port": 8443, "targetPort": 8443}]),
        available=("False", "ServicePortError"), degraded=("False", "Unavailable"),
        message_has=('service/demo in "default" is not listening on port 443',), targets=()),
    Row("port defaults to 443 when the APIService names none",
        apiservice=make_apiservice(port=None, ca_bundle=CA_PEM), targets=("10.0.0.1:8443",)),
    Row("APIService port 8443 matches a Service port 8443",
        apiservice=make_apiservice(port=8443, ca_bundle=CA_PEM),
        service=make_service(ports=[{"name": "https", "port": 8443, "targetPort": 9443}]),
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1")], port=9443)], targets=("10.0.0.1:9443",)),
    Row("ExternalName is probed at the external name",
        service=make_service(service_type="ExternalName", external_name="api.example.internal"), slices=[],
        targets=("api.example.internal:443",)),
    Row("no EndpointSlice", slices=[], available=("False", "EndpointsNotFound"), degraded=("False", "Unavailable"),
        message_has=('cannot find endpointslices for service/demo in "default"',), targets=()),
    Row("slice with no endpoints", slices=[make_slice(endpoints=[])], available=("False", "MissingEndpoints"),
        degraded=("False", "Unavailable"),
        message_has=('endpointslices for service/demo in "default" have no addresses with port name "https"',),
        targets=()),
    Row("not-ready endpoint", slices=[make_slice(endpoints=[make_endpoint("10.0.0.1", ready=False)])],
        available=("False", "MissingEndpoints"), degraded=("False", "Unavailable"), targets=()),
    Row("terminating endpoint (ready=false) is not probed",
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1", ready=False, terminating=True),
                                      make_endpoint("10.0.0.2")])], targets=("10.0.0.2:8443",)),
    Row("ready unset counts as ready, as in kube-aggregator",
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1", ready=None)])], targets=("10.0.0.1:8443",)),
    Row("slice port with another name does not count",
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1")], port_name="metrics")],
        available=("False", "MissingEndpoints"), degraded=("False", "Unavailable"), targets=()),
    Row("unnamed Service port needs slice port name \"\", not an absent name",
        service=make_service(ports=[{"port": 443, "targetPort": 8443}]),
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1")], port_name=None)],
        available=("False", "MissingEndpoints"), degraded=("False", "Unavailable"), targets=()),
    Row("unnamed Service port matches slice port name \"\"",
        service=make_service(ports=[{"port": 443, "targetPort": 8443}]),
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1")], port_name="")], targets=("10.0.0.1:8443",)),
    Row("several slices are merged, deduplicated and sorted",
        slices=[make_slice(name="b", endpoints=[make_endpoint("10.0.0.3"), make_endpoint("10.0.0.1")]),
                make_slice(name="a", endpoints=[make_endpoint("10.0.0.1"), make_endpoint("10.0.0.2")])],
        targets=("10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443")),
    Row("target port number comes from each slice",
        slices=[make_slice(name="a", endpoints=[make_endpoint("10.0.0.1")], port=8443),
                make_slice(name="b", endpoints=[make_endpoint("10.0.0.2")], port=9443)],
        targets=("10.0.0.1:8443", "10.0.0.2:9443")),
    Row("IPv6 endpoints are bracketed",
        slices=[make_slice(endpoints=[make_endpoint("fd00::5")], address_type="IPv6")], targets=("[fd00::5]:8443",)),
    Row("caBundle that is not PEM", apiservice=make_apiservice(ca_bundle=b"not a certificate"),
        available=("False", "InvalidCABundle"), degraded=("False", "Unavailable"), targets=()),
    Row("caBundle that is not PEM is ignored with insecureSkipTLSVerify",
        apiservice=make_apiservice(ca_bundle=b"junk", insecure_skip_tls_verify=True), targets=("10.0.0.1:8443",)),
    Row("every endpoint fails", slices=[make_slice(endpoints=[make_endpoint("10.0.0.1"), make_endpoint("10.0.0.2")])],
        probes={"10.0.0.1:8443": (ErrorKind.REFUSED, "connection refused"),
                "10.0.0.2:8443": (ErrorKind.TIMEOUT, "timeout: no complete answer within 5s")},
        available=("False", "FailedDiscoveryCheck"), degraded=("False", "Unavailable"),
        message_has=("2/2 endpoints", "10.0.0.1:8443: connection refused",
                     "10.0.0.2:8443: timeout: no complete answer within 5s")),
    Row("wrong discovery document fails", probes={"10.0.0.1:8443": (
        ErrorKind.INVALID_DOCUMENT, "InvalidDiscoveryDocument: groupVersion is 'x/v9', not 'demo.example.com/v1'")},
        available=("False", "FailedDiscoveryCheck"), degraded=("False", "Unavailable"),
        message_has=("InvalidDiscoveryDocument",)),
    Row("some endpoints fail: available but degraded",
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1"), make_endpoint("10.0.0.2")])],
        probes={"10.0.0.2:8443": (ErrorKind.HTTP_STATUS, "bad status: 500")},
        available=("True", "Passed"), degraded=("True", "PartialFailure"),
        message_has=("discovery passed on 1/2 endpoints",
                     "1/2 endpoints failed discovery: 10.0.0.2:8443: bad status: 500")),
    Row("slow but within the budget: degraded", probes={"10.0.0.1:8443": ("ok", 3.2)},
        available=("True", "Passed"), degraded=("True", "SlowDiscovery"), message_has=("over half of the 5s",)),
    Row("exactly half the budget is not slow", probes={"10.0.0.1:8443": ("ok", 2.5)}),
    Row("refused identity: unknown, with what to grant",
        probes={"10.0.0.1:8443": (ErrorKind.UNAUTHORIZED, "HTTP 403 (the probe's identity was refused)")},
        available=("Unknown", "ProbeUnauthorized"), degraded=("Unknown", "ProbeUnauthorized"),
        message_has=("the probe identity may `get` /apis/demo.example.com/v1 as every authenticated user may",)),
    Row("refused without credentials under insecureSkipTLSVerify",
        apiservice=make_apiservice(insecure_skip_tls_verify=True),
        probes={"10.0.0.1:8443": (ErrorKind.UNAUTHORIZED, "HTTP 401 (the probe's identity was refused)")},
        available=("Unknown", "ProbeUnauthorized"), degraded=("Unknown", "ProbeUnauthorized"),
        message_has=("sends no credentials",)),
    Row("one pass outweighs refusals",
        slices=[make_slice(endpoints=[make_endpoint("10.0.0.1"), make_endpoint("10.0.0.2")])],
        probes={"10.0.0.2:8443": (ErrorKind.UNAUTHORIZED, "HTTP 401")},
        available=("True", "Passed"), degraded=("True", "PartialFailure")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_decision(row: Row) -> None:
    resolution, available, degraded = run(row)
    assert (available.type, degraded.type) == (TYPES.available, TYPES.degraded)
    assert (str(available.status), available.reason) == row.available
    assert (str(degraded.status), degraded.reason) == row.degraded
    text = available.message + " | " + degraded.message
    for part in row.message_has:
        assert part in text
    if row.targets is not None:
        plan_targets = tuple(t.endpoint for t in resolution.plan.targets) if resolution.plan else ()
        assert plan_targets == row.targets
    assert available.last_transition_time == degraded.last_transition_time == NOW


def test_discovery_paths_and_tls_identity() -> None:
    plan = resolve(make_apiservice("metrics.k8s.io", "v1beta1", service_namespace="kube-system",
                                   service_name="metrics-server", ca_bundle=CA_PEM),
                   make_service("kube-system", "metrics-server"),
                   [make_slice("kube-system", "metrics-server", [make_endpoint("10.0.0.9")])]).plan
    assert plan is not None
    assert (plan.path, plan.group_version) == ("/apis/metrics.k8s.io/v1beta1", "metrics.k8s.io/v1beta1")
    assert plan.server_name == "metrics-server.kube-system.svc"
    assert (plan.ca_bundle, plan.insecure_skip_tls_verify) == (CA_PEM, False)
    legacy = resolve(make_apiservice("", "v1", ca_bundle=CA_PEM), make_service(),
                     [make_slice(endpoints=[make_endpoint("10.0.0.1")])]).plan
    assert legacy is not None
    assert (legacy.path, legacy.group_version) == ("/api/v1", "v1")


def test_ca_bundle_is_decoded_from_base64() -> None:
    obj = make_apiservice(ca_bundle=CA_PEM)
    assert obj["spec"]["caBundle"] == base64.b64encode(CA_PEM).decode()
    plan = resolve(obj, make_service(), [make_slice(endpoints=[make_endpoint("10.0.0.1")])]).plan
    assert plan is not None and plan.ca_bundle == CA_PEM


def previous(status: str, reason: str, message: str = "m", ctype: str = TYPES.available) -> Condition:
    return Condition(ctype, Status(status), reason, message, EARLIER)


def test_transition_time_kept_when_only_reason_or_message_change() -> None:
    row = Row("x", service=None)  # False/ServiceNotFound
    _, available, degraded = run(row, [previous("False", "MissingEndpoints", "old"),
                                       previous("False", "Unavailable", "old", TYPES.degraded)])
    assert (available.reason, available.last_transition_time) == ("ServiceNotFound", EARLIER)
    assert degraded.last_transition_time == EARLIER


def test_transition_time_moves_when_status_flips() -> None:
    _, available, degraded = run(Row("x"), [previous("False", "FailedDiscoveryCheck"),
                                            previous("False", "Unavailable", ctype=TYPES.degraded)])
    assert (str(available.status), available.last_transition_time) == ("True", NOW)
    assert degraded.last_transition_time == EARLIER  # Degraded stayed False


def test_steady_state_writes_nothing_though_latency_varies() -> None:
    first = run(Row("x", probes={"10.0.0.1:8443": ("ok", 0.004)}))[1:]
    second = decide(resolve(Row("x").apiservice, Row("x").service, Row("x").slices),
                    [ProbeResult(Target("10.0.0.1", 8443), True, 0.35)], list(first), "2026-01-01T13:00:00Z",
                    TYPES, BUDGET)
    assert not changed(second, list(first))
    assert [c.last_transition_time for c in second] == [NOW, NOW]


def test_changed_sees_message_changes_but_not_timestamps() -> None:
    a = previous("False", "FailedDiscoveryCheck", "x")
    assert not changed([a], [Condition(a.type, a.status, a.reason, a.message, NOW)])
    assert changed([a], [Condition(a.type, a.status, a.reason, "y", EARLIER)])
    assert changed([a], [])


def test_our_conditions_ignores_kube_apiservers() -> None:
    status = {"conditions": [{"type": "Available", "status": "True", "reason": "Passed"},
                             {"type": TYPES.available, "status": "False", "reason": "X", "message": "m",
                              "lastTransitionTime": EARLIER}]}
    assert our_conditions(status, TYPES) == [previous("False", "X")]


@pytest.mark.parametrize(("seconds", "bucket"), [(0.001, "<1s"), (0.999, "<1s"), (1.0, "<2.5s"),
                                                  (4.9, "<5s"), (5.0, ">=5s")])
def test_latency_buckets(seconds: float, bucket: str) -> None:
    assert latency_bucket(seconds) == bucket


def test_custom_prefix_names_our_types() -> None:
    types = ConditionTypes("probes.example.com")
    row = Row("x")
    available, degraded = decide(resolve(row.apiservice, row.service, row.slices),
                                 [ProbeResult(Target("10.0.0.1", 8443), True, 0.01)], [], NOW, types, BUDGET)
    assert (available.type, degraded.type) == ("probes.example.com/Available", "probes.example.com/Degraded")
