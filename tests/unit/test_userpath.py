"""The user's path (DESIGN 9), table-tested: what each kube-apiserver instance's answer means, and
which verdict the endpoints' and the instances' answers together make. Plain data, no cluster."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from apiservice_operator.core.decide import decide
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Target,
)
from apiservice_operator.core.path import (
    GATE_HELD_SECONDS,
    PathEvidence,
    PathMemory,
    PathOutcome,
    PathResult,
    classify,
    path_plan,
    remember,
    resolve_instances,
)
from apiservice_operator.core.transitions import event_for_transition

TYPES = ConditionTypes()
NOW = "2026-01-01T12:00:00Z"
BUDGET = 5.0
EP, EP2 = Target("10.0.0.1", 8443), Target("10.0.0.2", 8443)
I1, I2 = Target("10.250.0.2", 6443), Target("10.250.0.3", 6443)
PLAN = ProbePlan(targets=(EP,), path="/apis/demo.example.com/v1", group_version="demo.example.com/v1",
                 server_name="demo.default.svc", ca_bundle=None, insecure_skip_tls_verify=False)
PLAN2 = dataclasses.replace(PLAN, targets=(EP, EP2))
PLAN_INSECURE = dataclasses.replace(PLAN, insecure_skip_tls_verify=True)
DIAL = "dial tcp 10.0.0.1:8443: i/o timeout"
KUBE_TIMEOUT = f'failing or missing response from https://10.0.0.1:8443/apis/demo.example.com/v1: Get "...": {DIAL}'
KUBE_403 = ("failing or missing response from https://10.0.0.1:8443/apis/demo.example.com/v1: bad status from "
            "https://10.0.0.1:8443/apis/demo.example.com/v1: 403")
SAR_FORBIDDEN = ('Internal Server Error: "/apis/demo.example.com/v1": subjectaccessreviews.authorization.k8s.io is '
                 'forbidden: User "system:serviceaccount:wardle:apiserver" cannot create resource')


def ok(target: Target, latency: float = 0.02) -> ProbeResult:
    return ProbeResult(target, True, latency, None, "ok", 200)


def answer(target: Target, code: int, body: str = "") -> ProbeResult:
    kind = ErrorKind.UNAUTHORIZED if code in (401, 403) else ErrorKind.HTTP_STATUS
    return ProbeResult(target, False, 0.01, kind, f"bad status: {code}", code, body)


def timeout(target: Target) -> ProbeResult:
    return ProbeResult(target, False, 5.0, ErrorKind.TIMEOUT, "timeout: no complete answer within 5s")


def refused(target: Target) -> ProbeResult:
    return ProbeResult(target, False, 0.01, ErrorKind.REFUSED, "connection refused")


GATED = "service unavailable\n"


@dataclass(frozen=True)
class Row:
    id: str
    direct: list[ProbeResult]
    through: list[ProbeResult]
    available: tuple[str, str]
    degraded: tuple[str, str]
    kube: tuple[Status | None, str] = (Status.TRUE, "all checks passed")
    identity_allowed: bool | None = True
    available_has: tuple[str, ...] = ()
    degraded_has: tuple[str, ...] = ()
    memory: dict[Target, PathResult] = field(default_factory=dict)
    previous_reason: str | None = None
    plan: ProbePlan | None = None  # default: PLAN, one endpoint


ROWS = [
    Row("every instance and endpoint passes", [ok(EP)], [ok(I1), ok(I2)], ("True", "Passed"),
        ("False", "AsExpected"), available_has=("through 2/2 kube-apiserver instances and on 1/1 endpoints in <1s",)),
    Row("control plane cut from the Pods: every instance times out, endpoints answer", [ok(EP)],
        [timeout(I1), timeout(I2)], ("False", "ControlPlaneUnreachable"), ("False", "Unavailable"),
        kube=(Status.FALSE, KUBE_TIMEOUT),
        available_has=("10.250.0.2:6443: timeout", "10.250.0.3:6443: timeout", "answer the operator directly (1/1",
                       "Allow traffic from the control plane", "on TCP 8443")),
    Row("control plane cut: the proxy's own dial error", [ok(EP)], [answer(I1, 503, f"Error trying to reach: {DIAL}")],
        ("False", "ControlPlaneUnreachable"), ("False", "Unavailable"), available_has=(DIAL,)),
    Row("control plane cut, seen only through kube-apiserver's gate and its own message", [ok(EP)],
        [answer(I1, 503, GATED), answer(I2, 503, GATED)], ("False", "ControlPlaneUnreachable"),
        ("False", "Unavailable"), kube=(Status.FALSE, KUBE_TIMEOUT),
        available_has=("503 to every request", DIAL)),
    Row("one of two instances cut: degraded, naming it", [ok(EP)], [timeout(I1), ok(I2)], ("True", "Passed"),
        ("True", "InstanceUnreachable"), available_has=("through 1/2 kube-apiserver instances",),
        degraded_has=("10.250.0.2:6443: timeout", "kubernetes/kubernetes#111890")),
    Row("one of two cut while kube-apiserver's condition gates both: each instance's last own answer stands",
        [ok(EP)], [answer(I1, 503, GATED), answer(I2, 503, GATED)], ("True", "Passed"),
        ("True", "InstanceUnreachable"), kube=(Status.FALSE, KUBE_TIMEOUT),
        memory={I1: PathResult(I1, PathOutcome.UNREACHABLE, "timeout: no complete answer within 5s"),
                I2: PathResult(I2, PathOutcome.PASSED, "ok")},
        degraded_has=("10.250.0.2:6443: timeout",)),
    Row("gated everywhere though every instance last passed: users get 503, so not available", [ok(EP)],
        [answer(I1, 503, GATED), answer(I2, 503, GATED)], ("False", "FailedDiscoveryCheck"),
        ("False", "Unavailable"), kube=(Status.FALSE, "failing or missing response from x: bad status: 500"),
        memory={I1: PathResult(I1, PathOutcome.PASSED, "ok"), I2: PathResult(I2, PathOutcome.PASSED, "ok")},
        available_has=("503 'service unavailable' to every request", "bad status: 500")),
    Row("the server just came back, kube-apiserver has not re-checked: no claim about the network", [ok(EP)],
        [answer(I1, 503, GATED)], ("False", "AwaitingKubeAPIServer"), ("False", "Unavailable"),
        kube=(Status.FALSE, KUBE_TIMEOUT), previous_reason="FailedDiscoveryCheck",
        available_has=("until its own check passes again", DIAL)),
    Row("a new APIService kube-apiserver has not judged yet: not known, not False", [ok(EP)],
        [answer(I1, 503, GATED)], ("Unknown", "AwaitingKubeAPIServer"), ("Unknown", "AwaitingKubeAPIServer"),
        kube=(None, ""), available_has=("has not judged this APIService",)),
    Row("kube-apiserver's condition is True but its proxy has not taken it in yet", [ok(EP)],
        [answer(I1, 503, GATED)], ("Unknown", "AwaitingKubeAPIServer"), ("Unknown", "AwaitingKubeAPIServer"),
        kube=(Status.TRUE, "all checks passed"), available_has=("has not yet taken in its own verdict",)),
    Row("gated after kube-apiserver's re-check: its fresh dial error names the network", [ok(EP)],
        [answer(I1, 503, GATED)], ("False", "ControlPlaneUnreachable"), ("False", "Unavailable"),
        kube=(Status.FALSE, KUBE_TIMEOUT), previous_reason="AwaitingKubeAPIServer"),
    Row("server refuses ordinary users while kube-apiserver's own check passes (auth-delegator gone)",
        [answer(EP, 401, "Unauthorized")], [answer(I1, 500, SAR_FORBIDDEN)], ("False", "UsersRefused"),
        ("False", "Unavailable"),
        available_has=("subjectaccessreviews", "10.0.0.1:8443: bad status: 401", "system:masters",
                       "system:auth-delegator", "extension-apiserver-authentication-reader")),
    Row("auth-delegator gone, seen on kind with metrics-server: it answers 500 to everyone, the anonymous probe too",
        [answer(EP, 500, SAR_FORBIDDEN)], [answer(I1, 500, SAR_FORBIDDEN)], ("False", "UsersRefused"),
        ("False", "Unavailable"), plan=PLAN_INSECURE,
        available_has=("may not review callers", "subjectaccessreviews.authorization.k8s.io is forbidden",
                       "system:auth-delegator")),
    Row("metrics-server as shipped (insecureSkipTLSVerify): no token goes, the anonymous probe is refused, users "
        "are served", [answer(EP, 403, "forbidden")], [ok(I1)], ("True", "Passed"), ("False", "AsExpected"),
        plan=PLAN_INSECURE, degraded_has=("sent without credentials", "403 (anonymous refused)")),
    Row("metrics-server as shipped, control plane cut: the anonymous refusal says the endpoints answer",
        [answer(EP, 403, "forbidden")], [timeout(I1)], ("False", "ControlPlaneUnreachable"), ("False", "Unavailable"),
        kube=(Status.FALSE, KUBE_TIMEOUT), plan=PLAN_INSECURE,
        available_has=("the endpoints answer the operator directly (1/1 refuse its anonymous probe",)),
    Row("verified TLS and the probe identity refused while users are served: our probe's problem, said",
        [answer(EP, 403, "forbidden")], [ok(I1)], ("True", "Passed"), ("True", "DirectProbeFailed")),
    Row("server refuses ordinary users with 403", [answer(EP, 403, "forbidden")],
        [answer(I1, 403, 'forbidden: User "system:serviceaccount:x:probe" cannot get path')],
        ("False", "UsersRefused"), ("False", "Unavailable")),
    Row("front proxy not trusted: forwarded requests refused, the same identity served directly", [ok(EP)],
        [answer(I1, 403, 'forbidden: User "system:anonymous" cannot get path "/apis/demo.example.com/v1"')],
        ("False", "FrontProxyNotTrusted"), ("False", "Unavailable"), kube=(Status.FALSE, KUBE_403),
        available_has=("system:anonymous", "requestheader client CA", "extension-apiserver-authentication")),
    Row("front proxy not trusted, seen only through the gate and kube-apiserver's 403", [ok(EP)],
        [answer(I1, 503, GATED)], ("False", "FrontProxyNotTrusted"), ("False", "Unavailable"),
        kube=(Status.FALSE, KUBE_403), available_has=(": 403",)),
    Row("kube-apiserver's RBAC denies the probe identity discovery: Unknown, naming the grant", [ok(EP)],
        [answer(I1, 403, 'forbidden: User "system:serviceaccount:x:probe" cannot get path')],
        ("Unknown", "ProbeUnauthorized"), ("Unknown", "ProbeUnauthorized"), identity_allowed=False,
        available_has=("RBAC does not let the probe identity", "system:discovery")),
    Row("the server itself is down: kube-apiserver's reason", [refused(EP)],
        [answer(I1, 503, "Error trying to reach service: dial tcp 10.0.0.1:8443: connect: connection refused")],
        ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
        available_has=("10.0.0.1:8443: connection refused", "through kube-apiserver instances")),
    Row("the server down and every request gated", [timeout(EP)], [answer(I1, 503, GATED)],
        ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"), kube=(Status.FALSE, KUBE_TIMEOUT),
        available_has=("10.0.0.1:8443: timeout", "503 for every request")),
    Row("the operator cannot reach any instance: the endpoints decide, and the message says so", [ok(EP)],
        [refused(I1)], ("True", "Passed"), ("False", "AsExpected"),
        available_has=("passed on 1/1 endpoints", "not checked through kube-apiserver (10.250.0.2:6443: connection")),
    Row("no instance known at all", [ok(EP)], [], ("True", "Passed"), ("False", "AsExpected"),
        available_has=("no kube-apiserver instance is known",)),
    Row("users are served, the operator's own probe of the endpoints fails", [timeout(EP)], [ok(I1)],
        ("True", "Passed"), ("True", "DirectProbeFailed"), available_has=("through 1/1 kube-apiserver instances in",),
        degraded_has=("10.0.0.1:8443: timeout",)),
    Row("kube-apiserver picked the endpoint that answers 500: the path works, that endpoint fails",
        [ok(EP), answer(EP2, 500, "boom")], [answer(I1, 500, "boom")], ("True", "Passed"), ("True", "PartialFailure"),
        available_has=("through 1/1 kube-apiserver instances and on 1/2 endpoints",),
        degraded_has=("10.0.0.2:8443: bad status: 500",), plan=PLAN2),
    Row("a wrong document relayed while an endpoint passes: the same", [ok(EP), answer(EP2, 200, "")],
        [ProbeResult(I1, False, 0.01, ErrorKind.INVALID_DOCUMENT, "InvalidDiscoveryDocument: kind is 'Status'", 200)],
        ("True", "Passed"), ("True", "PartialFailure"), plan=PLAN2),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_user_path_decides_the_verdict(row: Row) -> None:
    fresh = [classify(r) for r in row.through]
    results, _ = remember(PathMemory({t: (r, 0.0) for t, r in row.memory.items()}), fresh, now=1.0)
    evidence = PathEvidence(via="instances", results=results, identity="apiservice-operator/probe",
                            identity_allowed=row.identity_allowed, kube_status=row.kube[0], kube_message=row.kube[1])
    previous = ([Condition(TYPES.available, Status.FALSE, row.previous_reason, "", NOW)]
                if row.previous_reason else [])
    available, degraded = decide(Resolution(plan=row.plan or PLAN), row.direct, previous, NOW, TYPES, BUDGET, evidence)
    assert (str(available.status), available.reason) == row.available, available.message
    assert (str(degraded.status), degraded.reason) == row.degraded, degraded.message
    for part in row.available_has:
        assert part in available.message
    for part in row.degraded_has:
        assert part in degraded.message


def test_one_cut_instance_keeps_the_same_verdict_while_kube_apiserver_flips() -> None:
    """kube-apiserver's two instances overwrite its shared condition (kubernetes/kubernetes#111890):
    our conditions must not move as it does."""
    memory = PathMemory()
    seen = set()
    rounds = [[timeout(I1), ok(I2)], [answer(I1, 503, GATED), answer(I2, 503, GATED)]] * 5
    for now, through in enumerate(rounds):
        results, memory = remember(memory, [classify(r) for r in through], now=float(now))
        evidence = PathEvidence(via="instances", results=results, kube_status=Status.TRUE)
        available, degraded = decide(Resolution(plan=PLAN), [ok(EP)], [], NOW, TYPES, BUDGET, evidence)
        seen.add((available.status, available.reason, degraded.status, degraded.reason, degraded.message))
    assert len(seen) == 1, seen


@pytest.mark.parametrize(("result", "outcome"), [
    (ok(I1), PathOutcome.PASSED),
    (answer(I1, 503, GATED), PathOutcome.GATED),
    (answer(I1, 404, "404 page not found\n"), PathOutcome.GATED),
    (answer(I1, 503, f"Error trying to reach service: {DIAL}"), PathOutcome.UNREACHABLE),
    (timeout(I1), PathOutcome.UNREACHABLE),
    (answer(I1, 401, "Unauthorized"), PathOutcome.REFUSED),
    (answer(I1, 403, "forbidden"), PathOutcome.REFUSED),
    (answer(I1, 500, SAR_FORBIDDEN), PathOutcome.REFUSED),
    (answer(I1, 500, "boom"), PathOutcome.SERVER_ERROR),
    (ProbeResult(I1, False, 0.01, ErrorKind.INVALID_DOCUMENT, "InvalidDiscoveryDocument", 200), PathOutcome.INVALID),
    (refused(I1), PathOutcome.NO_ROUTE),
    (ProbeResult(I1, False, 0.01, ErrorKind.TLS, "tls: certificate verify failed"), PathOutcome.NO_ROUTE),
], ids=["2xx", "gate", "not-routed-yet", "proxy-dial-error", "timeout", "401", "403", "500-review-forbidden", "500",
        "invalid",
        "instance-refused", "instance-tls"])
def test_classify_reads_who_answered(result: ProbeResult, outcome: PathOutcome) -> None:
    assert classify(result).outcome is outcome


def test_remember_replaces_a_gated_answer_with_the_instances_last_own_answer() -> None:
    last = PathResult(I1, PathOutcome.UNREACHABLE, "timeout")
    merged, memory = remember(PathMemory({I1: (last, 10.0)}), [classify(answer(I1, 503, GATED))], now=20.0)
    assert merged[0].outcome is PathOutcome.UNREACHABLE and merged[0].remembered and merged[0].gated_now
    assert memory.answers[I1] == (last, 10.0)  # a gated answer is no new evidence


def test_remember_forgets_what_is_too_old() -> None:
    last = PathResult(I1, PathOutcome.PASSED, "ok")
    merged, memory = remember(PathMemory({I1: (last, 0.0)}), [classify(answer(I1, 503, GATED))], now=121.0)
    assert merged[0].outcome is PathOutcome.GATED and not memory.answers


def test_remember_keeps_no_route_out_and_drops_instances_that_left() -> None:
    passed = PathResult(I1, PathOutcome.PASSED, "ok")
    merged, memory = remember(PathMemory({I1: (passed, 0.0), I2: (passed, 0.0)}), [classify(refused(I1))], now=1.0)
    assert merged[0].outcome is PathOutcome.NO_ROUTE
    assert set(memory.answers) == {I1} and memory.answers[I1] == (passed, 0.0)


def _rounds(rounds: list[tuple[float, list[ProbeResult]]],
            memory: PathMemory | None = None) -> tuple[list[tuple[PathResult, ...]], PathMemory]:
    memory = memory or PathMemory({I1: (PathResult(I1, PathOutcome.PASSED, "ok"), 0.0),
                                   I2: (PathResult(I2, PathOutcome.PASSED, "ok"), 0.0)})
    seen = []
    for now, through in rounds:
        merged, memory = remember(memory, [classify(r) for r in through], now=now)
        seen.append(merged)
    return seen, memory


def test_a_gate_held_on_one_instance_while_another_forwards_is_that_instances_failure() -> None:
    """One of two instances cut from the server: its proxy kept answering 503 while the other's
    passed (its registration worker waited on the server's OpenAPI document), and its last pass,
    remembered, said 2/2 for two minutes while its users got 503."""
    held = [ok(I1), answer(I2, 503, GATED)]
    seen, memory = _rounds([(float(t), held) for t in range(1, 4 + int(GATE_HELD_SECONDS), 2)])
    first, last = seen[0][1], seen[-1][1]
    assert (first.outcome, first.remembered) == (PathOutcome.PASSED, True)  # a flip, as far as one check tells
    assert (last.outcome, last.remembered, last.gated_now) == (PathOutcome.UNREACHABLE, False, True)
    assert "503 service unavailable to every request for 16s while 10.250.0.2:6443 forwarded them" in last.detail
    evidence = PathEvidence(via="instances", results=seen[-1], kube_status=Status.TRUE)
    available, degraded = decide(Resolution(plan=PLAN), [ok(EP)], [], NOW, TYPES, BUDGET, evidence)
    assert (available.status, available.reason) == (Status.TRUE, "Passed")
    assert "through 1/2 kube-apiserver instances" in available.message
    assert (degraded.status, degraded.reason) == (Status.TRUE, "InstanceUnreachable")
    assert "10.250.0.3:6443: 503 service unavailable" in degraded.message
    # its own answer ends the hold: a later gate is a flip again, bridged by that answer
    seen, memory = _rounds([(20.0, [ok(I1), ok(I2)]), (21.0, held)], memory)
    assert (seen[-1][1].outcome, seen[-1][1].remembered) == (PathOutcome.PASSED, True)
    assert memory.held[I2].since == 21.0 and memory.held[I2].checks == 1


def test_a_gate_on_every_instance_is_the_shared_condition_and_never_held() -> None:
    both = [answer(I1, 503, GATED), answer(I2, 503, GATED)]
    seen, memory = _rounds([(float(t), both) for t in range(1, 60, 2)])
    assert all(r.remembered and r.outcome is PathOutcome.PASSED for r in seen[-1])
    assert not memory.held


def test_one_check_or_a_short_hold_is_a_flip_bridged_by_memory() -> None:
    gated_two = [ok(I1), answer(I2, 503, GATED)]
    # two checks, but closer together than the hold: remembered
    seen, _ = _rounds([(1.0, gated_two), (1.0 + GATE_HELD_SECONDS - 1, gated_two)])
    assert seen[-1][1].remembered
    # a single check long after the last own answer: remembered (a flip as far as it tells)
    seen, _ = _rounds([(100.0, gated_two)])
    assert seen[-1][1].remembered


def test_a_pause_longer_than_the_hold_starts_it_again() -> None:
    gated_two = [ok(I1), answer(I2, 503, GATED)]
    both = [answer(I1, 503, GATED), answer(I2, 503, GATED)]
    rounds = [(1.0, gated_two), (2.0, both), (1.0 + GATE_HELD_SECONDS + 5, gated_two)]
    seen, memory = _rounds(rounds)
    assert seen[-1][1].remembered  # the first disagreement was 20 s ago, with none since
    assert memory.held[I2].since == rounds[-1][0]


def test_a_404_not_yet_routed_is_never_held() -> None:
    """kube-apiserver's mux routes a new group/version 10-25 s after Available with 1,000 new
    APIServices, per instance: users wait on it everywhere, not on one instance's proxy."""
    not_routed = [ok(I1), answer(I2, 404, "404 page not found\n")]
    seen, memory = _rounds([(float(t), not_routed) for t in range(1, 60, 2)])
    assert seen[-1][1].remembered and not memory.held


def _slice(endpoints: list[dict[str, object]], port_name: str = "https", port: int = 6443) -> dict[str, object]:
    return {"ports": [{"name": port_name, "port": port}], "endpoints": endpoints}


def test_resolve_instances_reads_the_kubernetes_services_slices() -> None:
    slices = [_slice([{"addresses": ["10.250.0.3"]}, {"addresses": ["10.250.0.2"], "conditions": {"ready": True}},
                      {"addresses": ["10.250.0.9"], "conditions": {"ready": False}}]),
              _slice([{"addresses": ["10.250.0.8"]}], port_name="other")]
    assert resolve_instances(slices) == (I1, Target("10.250.0.3", 6443))
    assert resolve_instances(slices, pick=["10.250.0.3:6443"]) == (Target("10.250.0.3", 6443),)
    assert resolve_instances([]) == ()


def test_path_plan_asks_kube_apiserver_for_the_same_document_over_verified_tls() -> None:
    insecure = ProbePlan(targets=(EP,), path="/api/v1", group_version="v1", server_name="demo.default.svc",
                         ca_bundle=None, insecure_skip_tls_verify=True)
    plan = path_plan(insecure, [I1], b"CA")
    assert (plan.targets, plan.path, plan.group_version) == ((I1,), "/api/v1", "v1")
    assert (plan.server_name, plan.ca_bundle, plan.insecure_skip_tls_verify) == ("kubernetes.default.svc", b"CA", False)


def test_awaiting_kube_apiserver_makes_no_event_and_the_verdict_after_it_counts_as_the_first() -> None:
    awaiting = Condition(TYPES.available, Status.UNKNOWN, "AwaitingKubeAPIServer", "", NOW)
    passed = Condition(TYPES.available, Status.TRUE, "Passed", "discovery passed", NOW)
    as_expected = Condition(TYPES.degraded, Status.FALSE, "AsExpected", "", NOW)
    assert event_for_transition({}, awaiting, as_expected) is None
    assert event_for_transition({TYPES.available: awaiting}, passed, as_expected) is None  # all well: no news
    failed_first = Condition(TYPES.available, Status.FALSE, "FailedDiscoveryCheck", "", NOW)
    first = event_for_transition({TYPES.available: awaiting}, failed_first, as_expected)
    assert first is not None and (first.type, first.reason) == ("Warning", "FailedDiscoveryCheck")
    failed = Condition(TYPES.available, Status.FALSE, "FailedDiscoveryCheck", "", NOW)
    back = Condition(TYPES.available, Status.FALSE, "AwaitingKubeAPIServer", "", NOW)
    assert event_for_transition({TYPES.available: failed}, back, as_expected) is None

