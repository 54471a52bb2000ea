"""decide: resolution + probe results + our previous conditions -> our new conditions. Pure.

`lastTransitionTime` moves only when `status` flips (kube-aggregator's SetAPIServiceCondition).
Messages carry no raw timings, only coarse buckets, and the buckets and SlowDiscovery have
hysteresis: a message that changed whenever a probe's latency crossed a line (a loaded machine
hovers around one) would make every probe a status write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from apiservice_operator.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Verdict,
)

MAX_ENDPOINTS_IN_MESSAGE = 10
# Coarse on purpose: a connection's first probe (TCP + TLS handshake) and the next ones, over the
# kept-alive connection, must land in the same bucket or steady state would cost a write.
_LATENCY_BUCKETS = ((1.0, "<1s"), (2.5, "<2.5s"), (5.0, "<5s"))


_LABELS = [label for _, label in _LATENCY_BUCKETS] + [">=5s"]
_LOWER_LIMITS = [0.0] + [limit for limit, _ in _LATENCY_BUCKETS]  # a bucket's lower edge, by index
# a bucket is left downwards only when the latency is well below its lower edge
_DOWN_FACTOR = 0.5
# SlowDiscovery starts above half the budget and ends only below this share of that half
_SLOW_EXIT_FACTOR = 0.8
_BUCKET_IN_MESSAGE = re.compile(r" in (<[0-9.]+s|>=5s)")


def latency_bucket(seconds: float, previous: str | None = None) -> str:
    """The bucket of `seconds`: always an upper bound of it ("<2.5s" for 0.7 s is still true), so
    a higher previous bucket is kept until the latency has clearly come down."""
    index = next((i for i, (limit, _) in enumerate(_LATENCY_BUCKETS) if seconds < limit), len(_LATENCY_BUCKETS))
    if previous in _LABELS:
        before = _LABELS.index(previous)
        if before > index and seconds >= _LOWER_LIMITS[before] * _DOWN_FACTOR:
            return previous
    return _LABELS[index]


def _previous_bucket(previous: Condition | None) -> str | None:
    found = _BUCKET_IN_MESSAGE.search(previous.message) if previous is not None else None
    return found.group(1) if found else None


def _list_failures(failures: Sequence[ProbeResult]) -> str:
    shown = [f.describe() for f in sorted(failures, key=lambda f: f.target.endpoint)[:MAX_ENDPOINTS_IN_MESSAGE]]
    more = len(failures) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _unauthorized_message(plan: ProbePlan, failures: Sequence[ProbeResult]) -> str:
    if plan.insecure_skip_tls_verify:
        hint = ("the APIService sets insecureSkipTLSVerify, so the operator sends no credentials; set "
                "spec.caBundle so its ServiceAccount token can be sent over verified TLS")
    else:
        hint = (f"grant the operator's ServiceAccount `get` on the non-resource URL {plan.path} in the "
                "aggregated server's authorizer (kube-apiserver's system:discovery ClusterRole does this "
                "where the server delegates authorization)")
    return f"the aggregated server refused the operator's probe: {_list_failures(failures)}; {hint}"


def _conclude(resolution: Resolution, probes: Sequence[ProbeResult], budget: float,
              before: Mapping[str, Condition], types: ConditionTypes) -> tuple[Verdict, Verdict]:
    """(available, degraded) before transition times are applied."""
    if resolution.verdict is not None:
        verdict = resolution.verdict
        if verdict.status is Status.TRUE:
            return verdict, Verdict(Status.FALSE, verdict.reason, "not probed: " + verdict.message)
        return verdict, Verdict(Status.FALSE, "Unavailable", f"not available: {verdict.reason}")

    plan = resolution.plan
    assert plan is not None, "a resolution has either a verdict or a plan"
    total = len(plan.targets)
    passed = [p for p in probes if p.ok]
    failed = [p for p in probes if not p.ok]
    # a target without a result (it should not happen) counts as failed, never as passed
    missing = total - len(probes)

    if passed:
        slowest = max(passed, key=lambda p: p.latency)
        prior_available = before.get(types.available)
        bucket = latency_bucket(slowest.latency, _previous_bucket(prior_available))
        available = Verdict(Status.TRUE, "Passed", f"discovery passed on {len(passed)}/{total} endpoints in {bucket}")
        prior_degraded = before.get(types.degraded)
        was_slow = prior_degraded is not None and prior_degraded.reason == "SlowDiscovery"
        slow_line = budget / 2 * (_SLOW_EXIT_FACTOR if was_slow else 1.0)
        if failed or missing:
            degraded = Verdict(
                Status.TRUE, "PartialFailure",
                f"{len(failed) + missing}/{total} endpoints failed discovery: {_list_failures(failed)}")
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
        f"failing or missing response from {total - len(passed)}/{total} endpoints: {_list_failures(failed)}")
    return available, Verdict(Status.FALSE, "Unavailable", "not available: FailedDiscoveryCheck")


def decide(
    resolution: Resolution,
    probes: Sequence[ProbeResult],
    previous: Sequence[Condition],
    now: str,
    types: ConditionTypes,
    budget: float,
) -> tuple[Condition, Condition]:
    """Our (Available, Degraded) conditions. `now` is RFC 3339; time is never read here."""
    before = {c.type: c for c in previous}
    available, degraded = _conclude(resolution, probes, budget, before, types)

    def build(ctype: str, verdict: Verdict) -> Condition:
        prior = before.get(ctype)
        since = prior.last_transition_time if prior and prior.status == verdict.status else now
        return Condition(ctype, verdict.status, verdict.reason, verdict.message, since)

    return build(types.available, available), build(types.degraded, degraded)


def changed(new: Sequence[Condition], previous: Sequence[Condition]) -> bool:
    """True when a write is needed: any of our conditions differs in status, reason or message."""
    before = {c.type: c for c in previous}
    return any(c.type not in before or not c.same_state(before[c.type]) for c in new)


def our_conditions(apiservice_status: Mapping[str, Any] | None, types: ConditionTypes) -> list[Condition]:
    conditions = (apiservice_status or {}).get("conditions") or []
    return [Condition.from_api(c) for c in conditions if isinstance(c, dict) and c.get("type") in types.all]
