"""decide: resolution + probe results + our previous conditions -> our new conditions. Pure.

`lastTransitionTime` moves only when `status` flips (kube-aggregator's SetAPIServiceCondition).
Messages carry no raw timings, only coarse buckets, and the buckets and SlowDiscovery have
hysteresis: a message that changed whenever a probe's latency crossed a line (a loaded machine
hovers around one) would make every probe a status write.

It is a small package: the endpoints' verdict (direct), the user's-path verdict (userpath) and
their shared wording; this module weighs the resolution, picks one, and applies transition times,
certificate expiry and the blast radius.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apiservice_operator.core import certs
from apiservice_operator.core.blast import describe_blocked
from apiservice_operator.core.clientview import ClientView
from apiservice_operator.core.consumers import describe_stalled
from apiservice_operator.core.decide.clients import conclude_clients
from apiservice_operator.core.decide.direct import conclude_direct
from apiservice_operator.core.decide.userpath import conclude_path, list_path
from apiservice_operator.core.decide.wording import (
    AWAITING,
    DEFAULT_EXPIRY_WARNING,
    MAX_ENDPOINTS_IN_MESSAGE,
    latency_bucket,
)
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Verdict,
)
from apiservice_operator.core.path import PathEvidence, PathOutcome

__all__ = ["AWAITING", "DEFAULT_EXPIRY_WARNING", "changed", "decide", "latency_bucket", "our_conditions"]


def _conclude(resolution: Resolution, probes: Sequence[ProbeResult], budget: float,
              before: Mapping[str, Condition], types: ConditionTypes,
              path: PathEvidence | None) -> tuple[Verdict, Verdict]:
    """(available, degraded) before transition times are applied."""
    if resolution.verdict is not None:
        verdict = resolution.verdict
        if verdict.status is Status.TRUE:
            return verdict, Verdict(Status.FALSE, verdict.reason, "not probed: " + verdict.message)
        return verdict, Verdict(Status.FALSE, "Unavailable", f"not available: {verdict.reason}")

    plan = resolution.plan
    assert plan is not None, "a resolution has either a verdict or a plan"
    if path is None:
        return conclude_direct(plan, probes, budget, before, types)
    answering = [r for r in path.results if r.outcome is not PathOutcome.NO_ROUTE]
    if not answering:
        # no instance could be asked: the direct probe is all we know, and the message says so
        available, degraded = conclude_direct(plan, probes, budget, before, types)
        why = list_path(path.results) if path.results else "no kube-apiserver instance is known"
        note = f"; not checked through kube-apiserver ({why})"
        return Verdict(available.status, available.reason, available.message + note), degraded
    return conclude_path(plan, probes, budget, before, types, path, answering)


def decide(
    resolution: Resolution,
    probes: Sequence[ProbeResult],
    previous: Sequence[Condition],
    now: str,
    types: ConditionTypes,
    budget: float,
    path: PathEvidence | None = None,
    expiry_warning: float = DEFAULT_EXPIRY_WARNING,
    blocked: Sequence[str] = (),
    clients: ClientView | None = None,
    stalled: Sequence[str] = (),
) -> tuple[Condition, Condition]:
    """Our (Available, Degraded) conditions. `now` is RFC 3339; time is never read here. Without
    `path` (the path probe off) the verdict rests on the endpoints alone. A certificate that ends
    within `expiry_warning` seconds makes an otherwise healthy API Degraded. `blocked`: the
    Terminating namespaces whose deletion waits on this API's discovery (its blast radius). `clients`:
    the group/version in each kube-apiserver instance's aggregated discovery (the clients' view).
    `stalled`: the HorizontalPodAutoscalers that cannot scale while this metrics API fails."""
    before = {c.type: c for c in previous}
    available, degraded = _conclude(resolution, probes, budget, before, types, path)
    if clients is not None:
        available, degraded = conclude_clients(available, degraded, clients, path.kube_since if path else "", now,
                                               before.get(types.available), before.get(types.degraded))
    if resolution.plan is not None and available.status is Status.TRUE:
        degraded = _watch_certificates(resolution.plan, probes, degraded, now, expiry_warning)
    if available.status is not Status.TRUE:
        for radius in (describe_blocked(blocked), describe_stalled(stalled)):
            if radius:
                available = Verdict(available.status, available.reason, f"{available.message}; {radius}")

    def build(ctype: str, verdict: Verdict) -> Condition:
        prior = before.get(ctype)
        since = prior.last_transition_time if prior and prior.status == verdict.status else now
        return Condition(ctype, verdict.status, verdict.reason, verdict.message, since)

    return build(types.available, available), build(types.degraded, degraded)


def _watch_certificates(plan: ProbePlan, probes: Sequence[ProbeResult], degraded: Verdict, now: str,
                        warning: float) -> Verdict:
    """Expiry is known before the outage: the served leaf of each endpoint that passed (the probe
    verified it) and each caBundle CA. A failure already on Degraded says more and stays."""
    seen = [(c, f"{p.target.endpoint} serves") for p in probes if p.ok for c in p.served]
    seen += [(c, "spec.caBundle holds") for c in plan.ca_certificates]
    if not seen or degraded.status is Status.TRUE:
        return degraded
    soon = sorted({(c.not_after, where, c.subject) for c, where in seen
                   if certs.seconds_left(c.not_after, now) < warning})
    if soon:
        first = soon[0][0]
        days = max(0, int(certs.seconds_left(first, now) // 86400))
        listed = "; ".join(f"{where} {subject}, ending {ends}"
                           for ends, where, subject in soon[:MAX_ENDPOINTS_IN_MESSAGE])
        return Verdict(Status.TRUE, "CertificateExpiring",
                       f"a certificate ends in {days} day{'' if days == 1 else 's'} ({first}), within the "
                       f"{warning / 86400:g}-day warning: "
                       f"{listed}. Renew it before then: an expired serving certificate or CA fails every request")
    earliest = min(c.not_after for c, _ in seen)
    return Verdict(degraded.status, degraded.reason, f"{degraded.message}; the earliest certificate ends {earliest}")


def changed(new: Sequence[Condition], previous: Sequence[Condition]) -> bool:
    """True when a write is needed: any of our conditions differs in status, reason or message."""
    before = {c.type: c for c in previous}
    return any(c.type not in before or not c.same_state(before[c.type]) for c in new)


def our_conditions(apiservice_status: Mapping[str, Any] | None, types: ConditionTypes) -> list[Condition]:
    conditions = (apiservice_status or {}).get("conditions") or []
    return [Condition.from_api(c) for c in conditions if isinstance(c, dict) and c.get("type") in types.all]
