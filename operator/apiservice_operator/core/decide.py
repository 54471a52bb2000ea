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

from apiservice_operator.core import certs
from apiservice_operator.core.blast import describe_blocked
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Verdict,
)
from apiservice_operator.core.path import PathEvidence, PathOutcome, PathResult

MAX_ENDPOINTS_IN_MESSAGE = 10
DEFAULT_EXPIRY_WARNING = 14 * 86400.0  # seconds
# a verdict that lasts one check, while kube-apiserver's own catches up: no Event is worth it
AWAITING = "AwaitingKubeAPIServer"
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


def _listed(entries: Sequence[tuple[str, str]]) -> str:
    """(endpoint, words) pairs, by endpoint, at most MAX_ENDPOINTS_IN_MESSAGE of them."""
    shown = [words for _, words in sorted(entries)[:MAX_ENDPOINTS_IN_MESSAGE]]
    more = len(entries) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _list_failures(failures: Sequence[ProbeResult]) -> str:
    return _listed([(f.target.endpoint, f.describe()) for f in failures])


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
    return f"the aggregated server refused the probe identity: {_list_failures(failures)}; {hint}"


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
        return _conclude_direct(plan, probes, budget, before, types)
    answering = [r for r in path.results if r.outcome is not PathOutcome.NO_ROUTE]
    if not answering:
        # no instance could be asked: the direct probe is all we know, and the message says so
        available, degraded = _conclude_direct(plan, probes, budget, before, types)
        why = _list_path(path.results) if path.results else "no kube-apiserver instance is known"
        note = f"; not checked through kube-apiserver ({why})"
        return Verdict(available.status, available.reason, available.message + note), degraded
    return _conclude_path(plan, probes, budget, before, types, path, answering)


def _conclude_direct(plan: ProbePlan, probes: Sequence[ProbeResult], budget: float,
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


def _list_path(results: Sequence[PathResult]) -> str:
    return _listed([(r.instance.endpoint, r.describe()) for r in results])


def _via(path: PathEvidence) -> str:
    return "kube-apiserver instances" if path.via == "instances" else f"kube-apiserver ({path.via})"


# kube-aggregator's own check message, when it is all that is left to go by (every request gated)
_KUBE_REFUSED = re.compile(r"bad status from \S+: 40[13]\b|\b40[13] (Unauthorized|Forbidden)")
_KUBE_UNREACHABLE = re.compile(
    r"i/o timeout|deadline exceeded|Client\.Timeout|connection refused|no route to host|"
    r"network is unreachable|connection reset|dial tcp", re.IGNORECASE)


def _ports(plan: ProbePlan) -> str:
    ports = sorted({t.port for t in plan.targets})
    return ", ".join(f"TCP {p}" for p in ports)


def _conclude_path(plan: ProbePlan, probes: Sequence[ProbeResult], budget: float,
                   before: Mapping[str, Condition], types: ConditionTypes, path: PathEvidence,
                   answering: Sequence[PathResult]) -> tuple[Verdict, Verdict]:
    """DESIGN 9: Available is what a request through kube-apiserver gets; the direct probe and the
    way each instance fails name the hop that breaks."""
    total = len(plan.targets)
    direct_passed = [p for p in probes if p.ok]
    direct_failed = [p for p in probes if not p.ok]
    direct_refused = [p for p in direct_failed if p.error is ErrorKind.UNAUTHORIZED]
    # kube-apiserver forwards each request to one endpoint of its choosing: an error status or a
    # wrong document relayed from a server means the path works and that endpoint fails, which the
    # endpoints' own answers show (or a verdict that flips with kube-apiserver's pick of endpoint)
    reached = ((PathOutcome.PASSED, PathOutcome.SERVER_ERROR, PathOutcome.INVALID) if direct_passed
               else (PathOutcome.PASSED,))
    passed = [r for r in answering if r.outcome in reached]
    failed = [r for r in answering if r.outcome not in (*reached, PathOutcome.GATED)]
    instances = len(answering)
    via = _via(path)
    kube_says = f"kube-apiserver's own Available says: {path.kube_message}" if path.kube_message else ""
    gate_only = all(r.gated_now for r in answering) and not failed

    if passed and not gate_only:
        latencies = [p.latency for p in direct_passed] or [r.latency for r in passed]
        bucket = latency_bucket(max(latencies), _previous_bucket(before.get(types.available)))
        direct = (f" and on {len(direct_passed)}/{total} endpoints in {bucket}" if direct_passed
                  else f" in {bucket}")
        available = Verdict(Status.TRUE, "Passed",
                            f"discovery passed through {len(passed)}/{instances} {via}{direct}")
        if failed:
            reason = ("InstanceUnreachable" if all(r.outcome is PathOutcome.UNREACHABLE for r in failed)
                      else "InstanceFailing")
            return available, Verdict(
                Status.TRUE, reason,
                f"{len(failed)}/{instances} kube-apiserver instances do not get discovery through: "
                f"{_list_path(failed)}; requests through them fail, and kube-apiserver's shared Available "
                "condition flips as its instances overwrite each other (kubernetes/kubernetes#111890)")
        if not direct_passed:
            return available, Verdict(
                Status.TRUE, "DirectProbeFailed",
                f"users are served through kube-apiserver, but the operator's own probe of the endpoints "
                f"failed: {_list_failures(direct_failed)}")
        _, degraded = _conclude_direct(plan, probes, budget, before, types)
        return available, degraded

    def unavailable(reason: str, message: str) -> tuple[Verdict, Verdict]:
        message += f"; 0/{instances} kube-apiserver instances served discovery"
        return Verdict(Status.FALSE, reason, message), Verdict(Status.FALSE, "Unavailable", f"not available: {reason}")

    direct_words = (f"the endpoints answer the operator directly ({len(direct_passed)}/{total} passed)"
                    if direct_passed else f"directly: {_list_failures(direct_failed)}")
    server_down = not direct_passed and len(direct_refused) < len(direct_failed)
    refused = [r for r in failed if r.outcome is PathOutcome.REFUSED]
    if refused and path.identity_allowed is False:
        message = (f"kube-apiserver's RBAC does not let the probe identity {path.identity or ''} get {plan.path}: "
                   "grant `get` on that non-resource URL (the built-in system:discovery ClusterRole does, for "
                   f"every authenticated user; was it changed?); through {via}: {_list_path(refused)}")
        return (Verdict(Status.UNKNOWN, "ProbeUnauthorized", message),
                Verdict(Status.UNKNOWN, "ProbeUnauthorized", "cannot tell: the probe identity may not read discovery"))
    if server_down:
        # the server itself fails: kube-apiserver's reason, and our words for each hop
        through = _list_path(failed) if failed else f"503 for every request; {kube_says}"
        return unavailable("FailedDiscoveryCheck",
                           f"failing or missing response from {total - len(direct_passed)}/{total} endpoints: "
                           f"{_list_failures(direct_failed)}; through {via}: {through}")

    if gate_only:
        # every instance answers 503 without trying: kube-apiserver's own check fails. What it
        # met is in its own message, the only evidence left of the hop it cannot pass
        prior = before.get(types.available)
        if direct_passed and path.kube_status in (None, Status.TRUE):
            # a new APIService: kube-apiserver answers 503 until its first check, milliseconds away,
            # and until its proxy has taken in its own verdict (one worker per instance, which may
            # first wait on the server's OpenAPI document: aggregator.go's specDownloadTimeout)
            state = "has not judged" if path.kube_status is None else "has not yet taken in its own verdict on"
            return (Verdict(Status.UNKNOWN, AWAITING, f"{direct_words}; kube-apiserver {state} this APIService "
                                                      "and answers 503 until it does"),
                    Verdict(Status.UNKNOWN, AWAITING, "cannot tell yet"))
        if direct_passed and prior is not None and prior.reason == "FailedDiscoveryCheck":
            # the server just came back and kube-apiserver has not re-checked yet (it backs off up
            # to 30 s): its message is about the outage that ended, not about the network. Our
            # write of this verdict is an update, which makes it re-check at once (DESIGN 6b);
            # the next check reads its fresh message
            return unavailable(AWAITING,
                               f"{direct_words}, but kube-apiserver still answers 503 to every request until its "
                               f"own check passes again{'; ' + kube_says if kube_says else ''}")
        if _KUBE_REFUSED.search(path.kube_message):
            refused_words = f"kube-apiserver answers 503 to every request; {kube_says}"
            return unavailable("FrontProxyNotTrusted", _front_proxy_message(refused_words, direct_words))
        if _KUBE_UNREACHABLE.search(path.kube_message):
            return unavailable("ControlPlaneUnreachable", _control_plane_message(
                plan, f"kube-apiserver answers 503 to every request; {kube_says}", direct_words))
        return unavailable("FailedDiscoveryCheck",
                           f"kube-apiserver answers 503 'service unavailable' to every request through {via}"
                           f"{'; ' + kube_says if kube_says else ''}; {direct_words}")

    if refused:
        through = f"through {via}: {_list_path(refused)}"
        if path.kube_status is Status.TRUE:
            return unavailable("UsersRefused", _users_refused_message(through, direct_refused, direct_words))
        if direct_passed:
            return unavailable("FrontProxyNotTrusted", _front_proxy_message(through, direct_words))
        return unavailable("UsersRefused", _users_refused_message(
            f"{through}; kube-apiserver's own check is refused too", direct_refused, direct_words))
    if any(r.outcome is PathOutcome.UNREACHABLE for r in failed):
        unreachable = [r for r in failed if r.outcome is PathOutcome.UNREACHABLE]
        return unavailable("ControlPlaneUnreachable", _control_plane_message(
            plan, f"no kube-apiserver instance gets through: {_list_path(unreachable)}"
                  f"{'; ' + kube_says if kube_says else ''}", direct_words))
    return unavailable("FailedDiscoveryCheck", f"through {via}: {_list_path(failed)}; {direct_words}")


def _control_plane_message(plan: ProbePlan, through: str, direct_words: str) -> str:
    return (f"{direct_words}, but {through}. Allow traffic from the control plane (kube-apiserver's hosts) to "
            f"the Pods on {_ports(plan)}: security groups, firewall rules, NetworkPolicy, konnectivity")


def _users_refused_message(through: str, direct_refused: Sequence[ProbeResult], direct_words: str) -> str:
    direct = f"directly: {_list_failures(direct_refused)}" if direct_refused else direct_words
    return (f"the server refuses ordinary users: {through}; {direct}. kube-apiserver's own check calls as "
            "system:kube-aggregator in group system:masters, which such servers always allow, so it cannot "
            "see this: the server serves only system:masters. Check its ServiceAccount's ClusterRoleBinding to "
            "system:auth-delegator (its TokenReviews and SubjectAccessReviews) and its RoleBinding to "
            "extension-apiserver-authentication-reader in kube-system")


def _front_proxy_message(through: str, direct_words: str) -> str:
    return (f"requests forwarded by kube-apiserver are refused ({through}) while {direct_words}: the server does "
            "not trust kube-apiserver's front-proxy client certificate, so forwarded callers arrive as "
            "system:anonymous. Check the server's requestheader client CA (the front-proxy CA) and its access to "
            "the extension-apiserver-authentication ConfigMap in kube-system (a RoleBinding to "
            "extension-apiserver-authentication-reader)")


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
) -> tuple[Condition, Condition]:
    """Our (Available, Degraded) conditions. `now` is RFC 3339; time is never read here. Without
    `path` (the path probe off) the verdict rests on the endpoints alone. A certificate that ends
    within `expiry_warning` seconds makes an otherwise healthy API Degraded. `blocked`: the
    Terminating namespaces whose deletion waits on this API's discovery (its blast radius)."""
    before = {c.type: c for c in previous}
    available, degraded = _conclude(resolution, probes, budget, before, types, path)
    if resolution.plan is not None and available.status is Status.TRUE:
        degraded = _watch_certificates(resolution.plan, probes, degraded, now, expiry_warning)
    radius = describe_blocked(blocked)
    if radius and available.status is not Status.TRUE:
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
