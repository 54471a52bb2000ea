"""The verdict on the user's path (DESIGN 9): the instances' answers weighed with the endpoints'
and kube-apiserver's own condition, naming the hop that breaks. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from apiservice_operator.core.decide.direct import conclude_direct
from apiservice_operator.core.decide.wording import AWAITING, latency_bucket, list_failures, listed, previous_bucket
from apiservice_operator.core.model import (
    Condition,
    ConditionTypes,
    ErrorKind,
    ProbePlan,
    ProbeResult,
    Status,
    Verdict,
)
from apiservice_operator.core.path import PathEvidence, PathOutcome, PathProbeMode, PathResult, reaching


def list_path(results: Sequence[PathResult]) -> str:
    return listed([(r.instance.endpoint, r.describe()) for r in results])


def _via(path: PathEvidence) -> str:
    return "kube-apiserver instances" if path.via == PathProbeMode.INSTANCES else f"kube-apiserver ({path.via})"


# kube-aggregator's own check message, when it is all that is left to go by (every request gated)
_KUBE_REFUSED = re.compile(r"bad status from \S+: 40[13]\b|\b40[13] (Unauthorized|Forbidden)")
_KUBE_UNREACHABLE = re.compile(
    r"i/o timeout|deadline exceeded|Client\.Timeout|connection refused|no route to host|"
    r"network is unreachable|connection reset|dial tcp", re.IGNORECASE)


# what a server says when its ServiceAccount may no longer ask kube-apiserver who a caller is or what
# the caller may do (its system:auth-delegator binding gone): every request but system:masters' fails
_DELEGATION_REFUSED = re.compile(
    r"(tokenreviews\.authentication\.k8s\.io|subjectaccessreviews\.authorization\.k8s\.io) is forbidden")


def _ports(plan: ProbePlan) -> str:
    ports = sorted({t.port for t in plan.targets})
    return ", ".join(f"TCP {p}" for p in ports)


def conclude_path(plan: ProbePlan, probes: Sequence[ProbeResult], budget: float,
                   before: Mapping[str, Condition], types: ConditionTypes, path: PathEvidence,
                   answering: Sequence[PathResult]) -> tuple[Verdict, Verdict]:
    """DESIGN 9: Available is what a request through kube-apiserver gets; the direct probe and the
    way each instance fails name the hop that breaks."""
    total = len(plan.targets)
    direct_passed = [p for p in probes if p.ok]
    direct_failed = [p for p in probes if not p.ok]
    direct_refused = [p for p in direct_failed if p.error is ErrorKind.UNAUTHORIZED]
    # an error relayed beside an endpoint that passes is that endpoint failing, not the path (else a
    # verdict that flips with kube-apiserver's pick of endpoint)
    reached = reaching(bool(direct_passed))
    passed = [r for r in answering if r.outcome in reached]
    failed = [r for r in answering if r.outcome not in (*reached, PathOutcome.GATED)]
    instances = len(answering)
    via = _via(path)
    kube_says = f"kube-apiserver's own Available says: {path.kube_message}" if path.kube_message else ""
    gate_only = all(r.gated_now for r in answering) and not failed

    if passed and not gate_only:
        latencies = [p.latency for p in direct_passed] or [r.latency for r in passed]
        bucket = latency_bucket(max(latencies), previous_bucket(before.get(types.available)))
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
                f"{list_path(failed)}; requests through them fail, and kube-apiserver's shared Available "
                "condition flips as its instances overwrite each other (kubernetes/kubernetes#111890)")
        if not direct_passed and plan.insecure_skip_tls_verify and len(direct_refused) == len(direct_failed):
            # no token goes where TLS is not verified: the endpoints answer and refuse an anonymous
            # caller, as they should (metrics-server's own manifests set insecureSkipTLSVerify)
            return available, Verdict(
                Status.FALSE, "AsExpected",
                f"users are served through kube-apiserver; the endpoints answer the operator's probe, sent without "
                f"credentials since spec.insecureSkipTLSVerify leaves TLS unverified, with "
                f"{', '.join(sorted({str(p.status_code) for p in direct_refused}))} (anonymous refused): set "
                f"spec.caBundle to have the endpoints' discovery checked too")
        if not direct_passed:
            return available, Verdict(
                Status.TRUE, "DirectProbeFailed",
                f"users are served through kube-apiserver, but the operator's own probe of the endpoints "
                f"failed: {list_failures(direct_failed)}")
        _, degraded = conclude_direct(plan, probes, budget, before, types)
        return available, degraded

    def unavailable(reason: str, message: str) -> tuple[Verdict, Verdict]:
        message += f"; 0/{instances} kube-apiserver instances served discovery"
        return Verdict(Status.FALSE, reason, message), Verdict(Status.FALSE, "Unavailable", f"not available: {reason}")

    if direct_passed:
        direct_words = f"the endpoints answer the operator directly ({len(direct_passed)}/{total} passed)"
    elif plan.insecure_skip_tls_verify and direct_failed and len(direct_refused) == len(direct_failed):
        direct_words = (f"the endpoints answer the operator directly ({len(direct_refused)}/{total} refuse its "
                        f"anonymous probe, as they should: no token goes where TLS is not verified)")
    else:
        direct_words = f"directly: {list_failures(direct_failed)}"
    server_down = not direct_passed and len(direct_refused) < len(direct_failed)
    refused = [r for r in failed if r.outcome is PathOutcome.REFUSED]
    if refused and path.identity_allowed is False:
        message = (f"kube-apiserver's RBAC does not let the probe identity {path.identity or ''} get {plan.path}: "
                   "grant `get` on that non-resource URL (the built-in system:discovery ClusterRole does, for "
                   f"every authenticated user; was it changed?); through {via}: {list_path(refused)}")
        return (Verdict(Status.UNKNOWN, "ProbeUnauthorized", message),
                Verdict(Status.UNKNOWN, "ProbeUnauthorized", "cannot tell: the probe identity may not read discovery"))
    delegation = [r.describe() for r in failed if _DELEGATION_REFUSED.search(r.detail)] + [
        p.describe() + (f": {p.body}" if p.body else "") for p in direct_failed if _DELEGATION_REFUSED.search(p.body)]
    if delegation:
        # it answers kube-apiserver's own check (system:masters needs no review) and fails everyone else
        return unavailable("UsersRefused", _users_refused_message(
            f"its ServiceAccount may not review callers ({'; '.join(delegation)[:600]})", [], direct_words))
    if server_down:
        # the server itself fails: kube-apiserver's reason, and our words for each hop
        through = list_path(failed) if failed else f"503 for every request; {kube_says}"
        return unavailable("FailedDiscoveryCheck",
                           f"failing or missing response from {total - len(direct_passed)}/{total} endpoints: "
                           f"{list_failures(direct_failed)}; through {via}: {through}")

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
        through = f"through {via}: {list_path(refused)}"
        if path.kube_status is Status.TRUE:
            return unavailable("UsersRefused", _users_refused_message(through, direct_refused, direct_words))
        if direct_passed:
            return unavailable("FrontProxyNotTrusted", _front_proxy_message(through, direct_words))
        return unavailable("UsersRefused", _users_refused_message(
            f"{through}; kube-apiserver's own check is refused too", direct_refused, direct_words))
    if any(r.outcome is PathOutcome.UNREACHABLE for r in failed):
        unreachable = [r for r in failed if r.outcome is PathOutcome.UNREACHABLE]
        return unavailable("ControlPlaneUnreachable", _control_plane_message(
            plan, f"no kube-apiserver instance gets through: {list_path(unreachable)}"
                  f"{'; ' + kube_says if kube_says else ''}", direct_words))
    return unavailable("FailedDiscoveryCheck", f"through {via}: {list_path(failed)}; {direct_words}")


def _control_plane_message(plan: ProbePlan, through: str, direct_words: str) -> str:
    return (f"{direct_words}, but {through}. Allow traffic from the control plane (kube-apiserver's hosts) to "
            f"the Pods on {_ports(plan)}: security groups, firewall rules, NetworkPolicy, konnectivity")


def _users_refused_message(through: str, direct_refused: Sequence[ProbeResult], direct_words: str) -> str:
    direct = f"directly: {list_failures(direct_refused)}" if direct_refused else direct_words
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


