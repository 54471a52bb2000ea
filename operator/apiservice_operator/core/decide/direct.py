"""The verdict from the endpoints alone: the path probe off, or no kube-apiserver instance
reachable. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from apiservice_operator.core.decide.wording import SLOW_EXIT_FACTOR, latency_bucket, list_failures, previous_bucket
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Status,
    Verdict,
)


def _unauthorized_message(plan: ProbePlan, failures: Sequence[ProbeResult]) -> str:
    if plan.insecure_skip_tls_verify:
        hint = ("the APIService sets insecureSkipTLSVerify, so the operator sends no credentials; set "
                "spec.caBundle so the probe identity's token can be sent over verified TLS")
    else:
        # every authenticated identity may read discovery (system:discovery), the probe identity too:
        # a refusal points at the server's own authentication or authorization, not at our grants
        hint = (f"the probe identity may `get` {plan.path} as every authenticated user may (system:discovery), "
                "so the server's own authentication or authorization fails: check its ClusterRoleBinding to "
                "system:auth-delegator (its TokenReviews and SubjectAccessReviews); with the path probe on, "
                "the verdict would say what users get")
    return f"the aggregated server refused the probe identity: {list_failures(failures)}; {hint}"


def conclude_direct(plan: ProbePlan, probes: Sequence[ProbeResult], budget: float,
                     before: Mapping[str, Condition], types: ConditionTypes) -> tuple[Verdict, Verdict]:
    """The verdict from the endpoints alone (the path probe off, or no instance reachable)."""
    total = len(plan.targets)
    passed = [p for p in probes if p.ok]
    failed = [p for p in probes if not p.ok]
    # a target without a result (it should not happen) counts as failed, never as passed
    missing = total - len(probes)

    if passed:
        slowest = max(passed, key=lambda p: p.latency)
        prior_available = before.get(types.available)
        bucket = latency_bucket(slowest.latency, previous_bucket(prior_available))
        available = Verdict(Status.TRUE, "Passed", f"discovery passed on {len(passed)}/{total} endpoints in {bucket}")
        prior_degraded = before.get(types.degraded)
        was_slow = prior_degraded is not None and prior_degraded.reason == "SlowDiscovery"
        slow_line = budget / 2 * (SLOW_EXIT_FACTOR if was_slow else 1.0)
        if failed or missing:
            degraded = Verdict(
                Status.TRUE, "PartialFailure",
                f"{len(failed) + missing}/{total} endpoints failed discovery: {list_failures(failed)}")
        elif slowest.latency > slow_line:
            # a count, not the slowest endpoint's name: among several slow endpoints which one is
            # slowest changes with jitter, and a changing message is a status write every probe
            slow = sum(1 for p in passed if p.latency > slow_line)
            degraded = Verdict(
                Status.TRUE, "SlowDiscovery",
                f"{slow}/{total} endpoints answered discovery in {bucket}, "
                f"close to or over half of the {budget:g}s budget")
        else:
            degraded = Verdict(Status.FALSE, "AsExpected", f"all {total} endpoints answered within half the budget")
        return available, degraded

    if any(p.error is ErrorKind.UNAUTHORIZED for p in failed):
        available = Verdict(Status.UNKNOWN, "ProbeUnauthorized", _unauthorized_message(plan, failed))
        return available, Verdict(Status.UNKNOWN, "ProbeUnauthorized", "cannot tell: the probe was refused")

    available = Verdict(
        Status.FALSE, "FailedDiscoveryCheck",
        f"failing or missing response from {total - len(passed)}/{total} endpoints: {list_failures(failed)}")
    return available, Verdict(Status.FALSE, "Unavailable", "not available: FailedDiscoveryCheck")


