"""decide(): resolution + probe results + previous conditions -> our (Available, Degraded) conditions.

Plain data only: ProbeResult / Target / ProbePlan are built directly, no prober, no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from apiservice_operator.core.decide import changed, decide, latency_bucket, our_conditions
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Target,
    Verdict,
)
from tests.builders import CA_PEM as TEST_CA_PEM

TYPES = ConditionTypes()
NOW, EARLIER, LATER = "2026-01-01T12:00:00Z", "2026-01-01T11:00:00Z", "2026-01-01T13:00:00Z"
BUDGET = 5.0
CA_PEM = TEST_CA_PEM

A, B, C = Target("10.0.0.1", 8443), Target("10.0.0.2", 8443), Target("fd00::3", 8443)


def plan(*targets: Target, insecure: bool = False, path: str = "/apis/demo.example.com/v1") -> Resolution:
    return Resolution(plan=ProbePlan(
        targets=targets, path=path, group_version=path.removeprefix("/apis/").removeprefix("/api/"),
        server_name="demo.default.svc", ca_bundle=None if insecure else CA_PEM, insecure_skip_tls_verify=insecure,
    ))


def ok(target: Target, latency: float = 0.01) -> ProbeResult:
    return ProbeResult(target, True, latency, None, "ok")


def fail(target: Target, error: ErrorKind, detail: str, latency: float = 0.01) -> ProbeResult:
    return ProbeResult(target, False, latency, error, detail)


def run(resolution: Resolution, probes: Sequence[ProbeResult] = (), previous: Sequence[Condition] = (),
        now: str = NOW, types: ConditionTypes = TYPES, budget: float = BUDGET) -> tuple[Condition, Condition]:
    return decide(resolution, list(probes), list(previous), now, types, budget)


def cond(ctype: str, status: str, reason: str, message: str = "m", since: str = EARLIER) -> Condition:
    return Condition(ctype, Status(status), reason, message, since)


# --- verdicts reached without a probe -------------------------------------------------------------

VERDICTS = [
    pytest.param(Verdict(Status.TRUE, "Local", "Local APIServices are always available"), "Local",
                 id="local"),
    pytest.param(Verdict(Status.FALSE, "ServiceNotFound", 'service/demo in "default" is not present'),
                 "Unavailable", id="service-not-found"),
    pytest.param(Verdict(Status.FALSE, "ServicePortError", 'service/demo in "default" is not listening on port 443'),
                 "Unavailable", id="service-port-error"),
    pytest.param(Verdict(Status.FALSE, "EndpointsNotFound", 'cannot find endpointslices for service/demo in "default"'),
                 "Unavailable", id="endpoints-not-found"),
    pytest.param(Verdict(Status.FALSE, "MissingEndpoints",
                         'endpointslices for service/demo in "default" have no addresses with port name "https"'),
                 "Unavailable", id="missing-endpoints"),
    pytest.param(Verdict(Status.FALSE, "InvalidCABundle", "spec.caBundle holds no PEM certificate"),
                 "Unavailable", id="invalid-ca-bundle"),
]


@pytest.mark.parametrize(("verdict", "degraded_reason"), VERDICTS)
def test_resolve_verdict_becomes_available_and_degraded_is_false(verdict: Verdict, degraded_reason: str) -> None:
    available, degraded = run(Resolution(verdict=verdict), probes=[])
    assert (available.type, degraded.type) == (TYPES.available, TYPES.degraded)
    assert (available.status, available.reason, available.message) == (verdict.status, verdict.reason, verdict.message)
    assert (degraded.status, degraded.reason) == (Status.FALSE, degraded_reason)
    assert degraded.message
    if verdict.status is Status.FALSE:
        assert verdict.reason in degraded.message  # says why it is not judged, not only "Unavailable"


# --- probe outcomes -------------------------------------------------------------------------------

# (resolution, probes, budget, (available status, reason), (degraded status, reason),
#  fragments of Available's message, fragments of Degraded's message)
OUTCOMES = [
    pytest.param(plan(A), [ok(A, 0.05)], BUDGET, ("True", "Passed"), ("False", "AsExpected"),
                 ["1/1"], [], id="all-pass-fast-is-as-expected"),
    pytest.param(plan(A, B, C), [ok(A), ok(B, 0.4), ok(C, 0.9)], BUDGET, ("True", "Passed"), ("False", "AsExpected"),
                 ["3/3", "<1s"], [], id="several-pass-fast-is-as-expected"),
    pytest.param(plan(A, B), [ok(A, 0.1), ok(B, 3.2)], BUDGET, ("True", "Passed"), ("True", "SlowDiscovery"),
                 ["2/2"], ["5s budget"], id="slowest-over-half-the-budget-is-slow-discovery"),
    pytest.param(plan(A), [ok(A, 2.5)], BUDGET, ("True", "Passed"), ("False", "AsExpected"),
                 [], [], id="exactly-half-the-budget-is-not-slow"),
    pytest.param(plan(A), [ok(A, 0.6)], 1.0, ("True", "Passed"), ("True", "SlowDiscovery"),
                 [], ["1s budget"], id="slow-is-relative-to-the-configured-budget"),
    pytest.param(plan(A, B), [ok(A), fail(B, ErrorKind.HTTP_STATUS, "bad status: 500")], BUDGET,
                 ("True", "Passed"), ("True", "PartialFailure"),
                 ["1/2"], ["1/2", "10.0.0.2:8443: bad status: 500"], id="some-fail-is-passed-but-partial-failure"),
    pytest.param(plan(A, B), [ok(A, 4.0), fail(B, ErrorKind.REFUSED, "connection refused")], BUDGET,
                 ("True", "Passed"), ("True", "PartialFailure"),
                 [], ["10.0.0.2:8443: connection refused"], id="partial-failure-outranks-slow-discovery"),
    pytest.param(plan(A, B), [ok(A)], BUDGET, ("True", "Passed"), ("True", "PartialFailure"),
                 ["1/2"], ["1/2"], id="a-target-without-a-result-counts-as-failed"),
    pytest.param(plan(A, B, C),
                 [fail(A, ErrorKind.REFUSED, "connection refused"),
                  fail(B, ErrorKind.TIMEOUT, "timeout: no complete answer within 5s"),
                  fail(C, ErrorKind.TLS, "certificate verify failed")], BUDGET,
                 ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
                 ["3/3", "10.0.0.1:8443: connection refused", "10.0.0.2:8443: timeout: no complete answer within 5s",
                  "[fd00::3]:8443: certificate verify failed"], [],
                 id="all-fail-is-failed-discovery-check-naming-every-endpoint"),
    pytest.param(plan(A), [fail(A, ErrorKind.INVALID_DOCUMENT,
                                "InvalidDiscoveryDocument: groupVersion is 'x/v9', not 'demo.example.com/v1'")],
                 BUDGET, ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
                 ["10.0.0.1:8443: InvalidDiscoveryDocument"], [], id="wrong-discovery-document-fails"),
    pytest.param(plan(A, B), [fail(A, ErrorKind.HTTP_STATUS, "bad status: 302")], BUDGET,
                 ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
                 ["2/2", "10.0.0.1:8443: bad status: 302"], [], id="all-fail-with-a-result-missing"),
    pytest.param(plan(A), [], BUDGET, ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
                 ["1/1"], [], id="no-results-at-all-is-never-passed"),
    pytest.param(plan(A, B), [fail(A, ErrorKind.UNAUTHORIZED, "HTTP 403 (the probe's identity was refused)"),
                              fail(B, ErrorKind.UNAUTHORIZED, "HTTP 401 (the probe's identity was refused)")], BUDGET,
                 ("Unknown", "ProbeUnauthorized"), ("Unknown", "ProbeUnauthorized"),
                 ["10.0.0.1:8443: HTTP 403", "10.0.0.2:8443: HTTP 401",
                  "the probe identity may `get` /apis/demo.example.com/v1 as every authenticated user may"], [],
                 id="unauthorized-on-all-is-unknown-with-what-to-grant"),
    pytest.param(plan(A, path="/api/v1"), [fail(A, ErrorKind.UNAUTHORIZED, "HTTP 403")], BUDGET,
                 ("Unknown", "ProbeUnauthorized"), ("Unknown", "ProbeUnauthorized"),
                 ["may `get` /api/v1"], [], id="unauthorized-names-the-legacy-path"),
    pytest.param(plan(A, insecure=True), [fail(A, ErrorKind.UNAUTHORIZED, "HTTP 401")], BUDGET,
                 ("Unknown", "ProbeUnauthorized"), ("Unknown", "ProbeUnauthorized"),
                 ["10.0.0.1:8443: HTTP 401", "insecureSkipTLSVerify", "no credentials"], [],
                 id="unauthorized-under-insecure-skip-tls-verify-says-no-credentials-were-sent"),
    pytest.param(plan(A, B), [ok(A), fail(B, ErrorKind.UNAUTHORIZED, "HTTP 401")], BUDGET,
                 ("True", "Passed"), ("True", "PartialFailure"),
                 [], ["10.0.0.2:8443: HTTP 401"], id="one-pass-outweighs-unauthorized"),
]


@pytest.mark.parametrize(("resolution", "probes", "budget", "available", "degraded", "available_has", "degraded_has"),
                         OUTCOMES)
def test_probe_results_decide_the_conditions(
    resolution: Resolution, probes: list[ProbeResult], budget: float, available: tuple[str, str],
    degraded: tuple[str, str], available_has: list[str], degraded_has: list[str],
) -> None:
    got_available, got_degraded = run(resolution, probes, budget=budget)
    assert (got_available.type, got_degraded.type) == (TYPES.available, TYPES.degraded)
    assert (str(got_available.status), got_available.reason) == available
    assert (str(got_degraded.status), got_degraded.reason) == degraded
    for part in available_has:
        assert part in got_available.message
    for part in degraded_has:
        assert part in got_degraded.message


def test_unauthorized_message_with_verified_tls_does_not_claim_no_credentials() -> None:
    available, _ = run(plan(A), [fail(A, ErrorKind.UNAUTHORIZED, "HTTP 403")])
    assert "no credentials" not in available.message
    assert "insecureSkipTLSVerify" not in available.message


def test_passing_endpoints_are_not_listed_as_failures() -> None:
    _, degraded = run(plan(A, B), [ok(A), fail(B, ErrorKind.REFUSED, "connection refused")])
    assert "10.0.0.1:8443" not in degraded.message


@pytest.mark.parametrize("latency", [
    pytest.param(3.217, id="slow-discovery"),
    pytest.param(0.4321, id="as-expected"),
])
def test_messages_carry_no_raw_latency(latency: float) -> None:
    available, degraded = run(plan(A), [ok(A, latency)])
    for text in (f"{latency}", f"{latency:.2f}", f"{latency:.1f}", f"{latency * 1000:.0f}ms"):
        assert text not in available.message and text not in degraded.message


# --- steady state: no writes while only latency moves within a bucket -----------------------------

STEADY = [
    pytest.param(plan(A, B), [ok(A, 0.004), ok(B, 0.02)], [ok(A, 0.35), ok(B, 0.9)], id="fast"),
    pytest.param(plan(A, B), [ok(A, 0.1), ok(B, 2.6)], [ok(A, 0.2), ok(B, 4.9)], id="slow-same-endpoint-slowest"),
    pytest.param(plan(A, B), [ok(A, 0.01), fail(B, ErrorKind.REFUSED, "connection refused", 0.001)],
                 [ok(A, 0.7), fail(B, ErrorKind.REFUSED, "connection refused", 0.003)], id="partial-failure"),
    pytest.param(plan(A), [fail(A, ErrorKind.HTTP_STATUS, "bad status: 500", 0.01)],
                 [fail(A, ErrorKind.HTTP_STATUS, "bad status: 500", 0.2)], id="failed-discovery-check"),
    pytest.param(plan(A, B), [ok(A, 2.6), ok(B, 3.1)], [ok(A, 4.4), ok(B, 3.0)],
                 # was a bug: the message named the slowest endpoint, so jitter between slow endpoints
                 # changed it and every probe became a status write
                 id="slow-endpoints-swap-places"),
]


@pytest.mark.parametrize(("resolution", "first", "second"), STEADY)
def test_latency_within_a_bucket_changes_nothing(
    resolution: Resolution, first: list[ProbeResult], second: list[ProbeResult],
) -> None:
    before = run(resolution, first, now=NOW)
    after = run(resolution, second, previous=before, now=LATER)
    assert after == before  # transition times included: nothing moved
    assert not changed(after, before)


# --- lastTransitionTime ---------------------------------------------------------------------------

PASSED: tuple[Resolution, list[ProbeResult]] = (plan(A), [ok(A)])  # -> Available True/Passed, Degraded False/AsExpected
# -> Available False/ServiceNotFound, Degraded False/Unavailable
NOT_FOUND: tuple[Resolution, list[ProbeResult]] = (
    Resolution(verdict=Verdict(Status.FALSE, "ServiceNotFound", "gone")), [])

TRANSITIONS = [
    pytest.param(PASSED, [], NOW, NOW, id="no-previous-condition-is-set-to-now"),
    pytest.param(NOT_FOUND, [cond(TYPES.available, "False", "MissingEndpoints", "old"),
                             cond(TYPES.degraded, "False", "Unavailable", "old")],
                 EARLIER, EARLIER, id="same-status-new-reason-and-message-keeps-the-time"),
    pytest.param(PASSED, [cond(TYPES.available, "True", "Passed", "discovery passed on 2/2 endpoints in <1s"),
                          cond(TYPES.degraded, "False", "AsExpected", "old")],
                 EARLIER, EARLIER, id="same-status-new-message-keeps-the-time"),
    pytest.param(PASSED, [cond(TYPES.available, "False", "FailedDiscoveryCheck"),
                          cond(TYPES.degraded, "False", "Unavailable")],
                 NOW, EARLIER, id="status-flips-to-now-only-where-it-flipped"),
    pytest.param(NOT_FOUND, [cond(TYPES.available, "True", "Passed"), cond(TYPES.degraded, "True", "SlowDiscovery")],
                 NOW, NOW, id="both-flip"),
    pytest.param(PASSED, [cond(TYPES.available, "Unknown", "ProbeUnauthorized"),
                          cond(TYPES.degraded, "Unknown", "ProbeUnauthorized")],
                 NOW, NOW, id="unknown-to-known-is-a-flip"),
    pytest.param(PASSED, [cond("Available", "True", "Passed"), cond("other.example.com/Available", "True", "Passed")],
                 NOW, NOW, id="kube-apiservers-and-other-prefixes-conditions-are-not-ours"),
]


@pytest.mark.parametrize(("given", "previous", "available_since", "degraded_since"), TRANSITIONS)
def test_last_transition_time_moves_only_when_status_flips(
    given: tuple[Resolution, list[ProbeResult]], previous: list[Condition], available_since: str, degraded_since: str,
) -> None:
    resolution, probes = given
    available, degraded = run(resolution, probes, previous=previous)
    assert (available.last_transition_time, degraded.last_transition_time) == (available_since, degraded_since)


# --- condition types ------------------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "available", "degraded"), [
    pytest.param(None, "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", id="default-prefix"),
    pytest.param("probes.example.com", "probes.example.com/Available", "probes.example.com/Degraded",
                 id="custom-prefix"),
])
def test_conditions_use_the_prefixed_types(prefix: str | None, available: str, degraded: str) -> None:
    types = ConditionTypes() if prefix is None else ConditionTypes(prefix)
    for resolution, probes in (PASSED, NOT_FOUND):
        got = run(resolution, probes, types=types)
        assert tuple(c.type for c in got) == (available, degraded)
        assert "Available" not in (c.type for c in got)


@pytest.mark.parametrize("prefix", [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("/", id="only-a-slash"),
    pytest.param("example.com/x", id="contains-a-slash"),
    pytest.param("a/b/c", id="several-slashes"),
    pytest.param("Example.com", id="not-lowercase"),
    pytest.param("exa_mple.com", id="not-a-dns-subdomain"),
])
def test_condition_types_refuse_a_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError):
        ConditionTypes(prefix)


def test_empty_prefix_error_explains_the_clash_with_plain_available() -> None:
    with pytest.raises(ValueError, match=r"must not be empty[^/]*plain `Available`"):
        ConditionTypes("")


# --- changed() ------------------------------------------------------------------------------------

BASE = cond(TYPES.available, "False", "FailedDiscoveryCheck", "x", EARLIER)
DEG = cond(TYPES.degraded, "False", "Unavailable", "y", EARLIER)

CHANGES = [
    pytest.param([BASE, DEG], [cond(BASE.type, "False", "FailedDiscoveryCheck", "x", NOW), DEG], False,
                 id="identical-but-last-transition-time"),
    pytest.param([BASE], [BASE, DEG, cond("Available", "True", "Passed")], False,
                 id="unrelated-previous-conditions-do-not-count"),
    pytest.param([BASE], [cond(BASE.type, "False", "FailedDiscoveryCheck", "other", EARLIER)], True,
                 id="message-differs"),
    pytest.param([BASE], [cond(BASE.type, "False", "MissingEndpoints", "x", EARLIER)], True, id="reason-differs"),
    pytest.param([BASE], [cond(BASE.type, "True", "FailedDiscoveryCheck", "x", EARLIER)], True, id="status-differs"),
    pytest.param([BASE, DEG], [BASE], True, id="a-condition-not-written-yet"),
    pytest.param([BASE], [], True, id="nothing-written-yet"),
]


@pytest.mark.parametrize(("new", "previous", "expected"), CHANGES)
def test_changed_ignores_transition_time_only(new: list[Condition], previous: list[Condition], expected: bool) -> None:
    assert changed(new, previous) is expected


# --- our_conditions() -----------------------------------------------------------------------------

def test_our_conditions_reads_only_our_types_from_status() -> None:
    status = {"conditions": [
        {"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"},
        {"type": "other.example.com/Available", "status": "False", "reason": "X"},
        {"type": TYPES.available, "status": "False", "reason": "ServiceNotFound", "message": "m",
         "lastTransitionTime": EARLIER},
        {"type": TYPES.degraded, "status": "False", "reason": "Unavailable", "message": "n",
         "lastTransitionTime": EARLIER},
    ]}
    assert our_conditions(status, TYPES) == [cond(TYPES.available, "False", "ServiceNotFound", "m"),
                                             cond(TYPES.degraded, "False", "Unavailable", "n")]


@pytest.mark.parametrize("status", [
    pytest.param(None, id="no-status"), pytest.param({}, id="empty-status"),
    pytest.param({"conditions": None}, id="null-conditions"),
])
def test_our_conditions_of_a_new_apiservice_is_empty(status: dict[str, object] | None) -> None:
    assert our_conditions(status, TYPES) == []


def test_decide_round_trips_through_the_api_shape_without_a_write() -> None:
    first = run(*PASSED)
    status = {"conditions": [{"type": "Available", "status": "True"}, *(c.to_api() for c in first)]}
    previous = our_conditions(status, TYPES)
    again = run(*PASSED, previous=previous, now=LATER)
    assert not changed(again, previous)
    assert again == first


# --- latency buckets ------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "bucket"), [
    pytest.param(0.0, "<1s", id="zero"), pytest.param(0.999, "<1s", id="just-under-1s"),
    pytest.param(1.0, "<2.5s", id="1s"), pytest.param(2.499, "<2.5s", id="just-under-2.5s"),
    pytest.param(2.5, "<5s", id="2.5s"), pytest.param(4.999, "<5s", id="just-under-5s"),
    pytest.param(5.0, ">=5s", id="5s"), pytest.param(60.0, ">=5s", id="a-minute"),
])
def test_latency_bucket(seconds: float, bucket: str) -> None:
    assert latency_bucket(seconds) == bucket


@pytest.mark.parametrize(("seconds", "previous", "bucket"), [
    pytest.param(1.2, "<1s", "<2.5s", id="up-at-once"),
    pytest.param(0.8, "<2.5s", "<2.5s", id="kept-just-below-its-edge"),
    pytest.param(0.6, "<2.5s", "<2.5s", id="kept-above-half-its-edge"),
    pytest.param(0.49, "<2.5s", "<1s", id="down-once-well-below"),
    pytest.param(2.0, "<5s", "<5s", id="5s-bucket-kept"),
    pytest.param(1.0, "<5s", "<2.5s", id="5s-bucket-left-below-1.25s"),
    pytest.param(0.1, ">=5s", "<1s", id="straight-down-to-the-true-bucket"),
    pytest.param(0.5, "garbage", "<1s", id="unknown-previous-ignored"),
])
def test_latency_bucket_has_hysteresis_and_stays_an_upper_bound(seconds: float, previous: str, bucket: str) -> None:
    assert latency_bucket(seconds, previous) == bucket
    assert seconds < {"<1s": 1.0, "<2.5s": 2.5, "<5s": 5.0, ">=5s": float("inf")}[bucket]


def test_latency_hovering_at_a_bucket_edge_writes_once_not_every_probe() -> None:
    previous: list[Condition] = []
    writes = 0
    for latency in [0.9, 1.1, 0.95, 1.05, 0.9, 1.2, 0.97, 1.01] * 3:
        new = run(plan(A), [ok(A, latency)], previous=previous)
        writes += changed(new, previous)
        previous = list(new)
    assert writes == 2  # the first verdict, then up to <2.5s once


def test_slow_discovery_hovering_at_half_the_budget_does_not_flap() -> None:
    previous: list[Condition] = []
    reasons = []
    for latency in [2.6, 2.4, 2.55, 2.3, 2.45, 2.6]:
        previous = list(run(plan(A), [ok(A, latency)], previous=previous))
        reasons.append(previous[1].reason)
    assert reasons == ["SlowDiscovery"] * 6
    previous = list(run(plan(A), [ok(A, 1.9)], previous=previous))
    assert previous[1].reason == "AsExpected"
