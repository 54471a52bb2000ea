"""The user's path, in pure terms: which kube-apiserver instances to ask, what each one's answer
means, and what is remembered across kube-apiserver's own flips. No I/O here (DESIGN 9).

A request for /apis/<group>/<version> through kube-apiserver is what every user and controller
makes. kube-aggregator's proxy (handler_proxy.go, v0.37.2) answers it in one of three ways, and
each says something different about which hop breaks:
- it forwards the request and relays the aggregated server's answer (2xx, or the server's own
  401/403/500: the server refused the caller);
- it tries to forward and fails: 503 with the dial or TLS error as plain text (responder.Error):
  this instance cannot reach the server;
- it does not try: 503 "service unavailable", because the APIService's shared `Available`
  condition is not True (proxyError in ServeHTTP). All instances read that one condition, so the
  answer says nothing about this instance's own path: we call it gated.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from apiservice_operator.core.model import ErrorKind, Obj, ProbePlan, ProbeResult, Status, Target

# kube-apiserver maintains this Service's EndpointSlice itself (its lease reconciler): one address
# per live instance, with no controller-manager needed (verified, DESIGN 9)
KUBERNETES_SERVICE = ("default", "kubernetes")
KUBERNETES_SERVER_NAME = "kubernetes.default.svc"
GATED_BODY = "service unavailable"
GATED_DETAIL = "503 service unavailable (kube-apiserver's own Available is not True)"
NOT_ROUTED_BODY = "404 page not found"
# how long an instance's own last answer stands in for it while kube-apiserver's shared condition
# gates every request: long enough to bridge the flips of kubernetes/kubernetes#111890 (instances
# overwrite each other every few seconds), short enough that a stale pass cannot hide an outage
MEMORY_SECONDS = 120.0
# The gate on one instance while another forwards the same request in its own right is not the shared
# condition (the instances take in each other's writes within milliseconds): it is that instance's own
# proxy, which has not taken in a passing verdict. Held this long, over two checks or more, it is what
# that instance's users get, and the memory no longer stands in for it. Seen on two instances with one
# cut from the server: its registration worker waited on the server's OpenAPI document (up to 60 s,
# aggregator.go) and its proxy answered 503 throughout, while the other instance's passed.
GATE_HELD_SECONDS = 15.0
# `auto` outside the cluster, while the instances do not answer from where the operator runs: how
# often they are tried again, so a network that heals is picked up (the kubeconfig's server meanwhile)
AUTO_RETRY_SECONDS = 180.0


class PathProbeMode(enum.StrEnum):
    """--path-probe: how the path through kube-apiserver is asked (the one list of modes)."""

    AUTO = "auto"  # INSTANCES inside the cluster; outside it, INSTANCES where they answer (choose_auto)
    INSTANCES = "instances"  # each kube-apiserver instance by address (default/kubernetes)
    KUBECONFIG = "kubeconfig"  # the server the operator's own kubeconfig names
    OFF = "off"  # no path probe: the endpoints alone decide

    def effective(self, in_cluster: bool) -> PathProbeMode:
        """`auto`: each instance by address in the cluster. From outside (a kubeconfig, as `make demo`
        runs it) the addresses in default/kubernetes may or may not be routable from here (a laptop's
        kind: often not; a control plane on the same network: yes), so `auto` stays AUTO there: it is
        decided per set of instances (choose_auto), the instances where they all answer, the
        kubeconfig's server otherwise, and the messages say which."""
        if self is PathProbeMode.AUTO and in_cluster:
            return PathProbeMode.INSTANCES
        return self


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` settled on outside the cluster, for one set of instances."""

    mode: PathProbeMode  # INSTANCES or KUBECONFIG
    instances: tuple[Target, ...]  # the set of instances (default/kubernetes) it was taken for
    at: float  # monotonic seconds
    why: str = ""  # why not the instances (KUBECONFIG only)


def livez_silent(instances: Iterable[Target], answers: Iterable[ProbeResult], within: float) -> dict[Target, str]:
    """The instances that did not answer /livez within `within` seconds, each with why. Any HTTP
    answer counts (the question is whether the instance is reached, not what it says); a late one is
    a frozen instance that came back meanwhile: it did not answer in time."""
    got = {r.target: r for r in answers}
    silent: dict[Target, str] = {}
    for instance in instances:
        answer = got.get(instance)
        if answer is None:
            silent[instance] = f"no answer to /livez within {within:g}s"
        elif answer.status_code is None:
            silent[instance] = answer.detail or "no answer to /livez"
        elif answer.latency >= within:
            silent[instance] = f"answered /livez only after {answer.latency:.1f}s"
    return silent


def choose_auto(instances: Sequence[Target], silent: Mapping[Target, str], now: float) -> AutoChoice:
    """`auto` outside the cluster: the instances when every one of them answers from here (else one
    that does not would read as its path failing), the kubeconfig's server otherwise, saying why."""
    chosen = tuple(instances)
    if not chosen:
        return AutoChoice(PathProbeMode.KUBECONFIG, chosen, now, "default/kubernetes lists no instances")
    missing = [(t, silent[t]) for t in chosen if t in silent]
    if not missing:
        return AutoChoice(PathProbeMode.INSTANCES, chosen, now)
    return AutoChoice(PathProbeMode.KUBECONFIG, chosen, now,
                      "the instances in default/kubernetes do not answer from here "
                      f"({'; '.join(f'{t.endpoint}: {why}' for t, why in missing)})")


def auto_due(choice: AutoChoice | None, instances: Sequence[Target], now: float,
             retry: float = AUTO_RETRY_SECONDS) -> bool:
    """Whether `auto` must ask the instances' /livez again: at first use, when the set of instances
    changed, and every `retry` seconds while it falls back to the kubeconfig's server. Never per check."""
    if choice is None or choice.instances != tuple(instances):
        return True
    return choice.mode is PathProbeMode.KUBECONFIG and now - choice.at >= retry


def kubeconfig_via(server: str, why: str = "") -> str:
    """How the messages name the kubeconfig's server as the path probed, and why, where `auto` chose it."""
    return f"the kubeconfig's server {server}" + (f": {why}" if why else "")


class PathOutcome(enum.StrEnum):
    PASSED = "passed"
    GATED = "gated"  # 503 "service unavailable": kube-apiserver's own condition says unavailable
    UNREACHABLE = "unreachable"  # the instance could not reach the server (or got no answer in time)
    REFUSED = "refused"  # the server refused the forwarded request (401/403, or 500 naming a forbidden review)
    SERVER_ERROR = "server_error"  # another error status relayed from the server
    INVALID = "invalid"  # a 2xx whose body is not the discovery document
    NO_ROUTE = "no_route"  # the operator could not reach this instance: no evidence about the API


def reaching(direct_passed: bool) -> tuple[PathOutcome, ...]:
    """The outcomes that show a request through kube-apiserver reaching the server. kube-apiserver
    forwards each request to one endpoint of its choosing: where an endpoint passes, an error status
    or a wrong document relayed from the server shows the path working and that endpoint failing
    (the endpoints' own answers say which)."""
    if direct_passed:
        return (PathOutcome.PASSED, PathOutcome.SERVER_ERROR, PathOutcome.INVALID)
    return (PathOutcome.PASSED,)


@dataclass(frozen=True)
class PathResult:
    instance: Target
    outcome: PathOutcome
    detail: str
    latency: float = 0.0
    gated_now: bool = False  # this probe met kube-apiserver's gate (the outcome may be remembered)
    remembered: bool = False  # the outcome is this instance's last own answer, not this probe's

    def describe(self) -> str:
        return f"{self.instance.endpoint}: {self.detail}"


@dataclass(frozen=True)
class PathEvidence:
    """What the path probe found, for the pure decision."""

    via: str  # "instances", or "kubeconfig server https://..." where instances cannot be reached
    results: tuple[PathResult, ...]
    identity: str = ""  # the probe identity's name, for messages
    identity_allowed: bool | None = None  # may kube-apiserver's RBAC let it read this path (None: not asked)
    kube_status: Status | None = None  # kube-apiserver's own Available on the APIService
    kube_message: str = ""
    kube_since: str = ""  # its lastTransitionTime (RFC 3339)


def resolve_instances(slices: Iterable[Obj], pick: Sequence[str] = ()) -> tuple[Target, ...]:
    """Every ready kube-apiserver address with its `https` port, from Service default/kubernetes's
    EndpointSlices; `pick` (host:port) narrows them (--path-probe-instances)."""
    targets: set[Target] = set()
    for endpoint_slice in slices:
        port = next((p.get("port") for p in endpoint_slice.get("ports") or []
                     if p.get("name") == "https" and p.get("port")), None)
        if port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready")
            addresses = endpoint.get("addresses") or []
            if (ready is None or ready) and addresses:
                targets.add(Target(addresses[0], int(port)))
    chosen = sorted(targets, key=lambda t: (t.host, t.port))
    if pick:
        chosen = [t for t in chosen if t.endpoint in pick]
    return tuple(chosen)


def path_plan(plan: ProbePlan, instances: Sequence[Target], cluster_ca: bytes | None,
              server_name: str = KUBERNETES_SERVER_NAME) -> ProbePlan:
    """The same discovery request, sent to kube-apiserver instead of the endpoints, verified
    against the cluster's CA."""
    return ProbePlan(targets=tuple(instances), path=plan.path, group_version=plan.group_version,
                     server_name=server_name, ca_bundle=cluster_ca, insecure_skip_tls_verify=False)


_REVIEW_WORDS = ("subjectaccessreview", "tokenreview", "forbidden")


def classify(result: ProbeResult) -> PathResult:
    """One instance's answer -> what it says about the path."""
    def out(outcome: PathOutcome, detail: str) -> PathResult:
        return PathResult(result.target, outcome, detail, result.latency, gated_now=outcome is PathOutcome.GATED)

    words = f": {result.body}" if result.body else ""
    if result.ok:
        return out(PathOutcome.PASSED, "ok")
    code = result.status_code
    if result.error is ErrorKind.TIMEOUT:
        return out(PathOutcome.UNREACHABLE, result.detail)
    if code == 404 and result.body.strip().lower() == NOT_ROUTED_BODY:
        # kube-apiserver's own mux: the group/version is not routed to the server yet (measured for
        # 10-25 s after Available=True with 1,000 new APIServices): no more about this instance's path
        # than the gate's 503 (a Go server's own 404 reads the same, but then its endpoints fail too)
        return out(PathOutcome.GATED, "404 page not found (kube-apiserver does not route this group/version yet)")
    if code == 503:
        if result.body.strip().lower() == GATED_BODY:
            return out(PathOutcome.GATED, GATED_DETAIL)
        return out(PathOutcome.UNREACHABLE, f"503{words}")
    if code in (401, 403):
        return out(PathOutcome.REFUSED, f"{code}{words}")
    if code is not None and code >= 500 and any(w in result.body.lower() for w in _REVIEW_WORDS):
        # a server built on k8s.io/apiserver answers 500 when its own TokenReview or
        # SubjectAccessReview is forbidden: it cannot tell who the caller is or what they may do
        return out(PathOutcome.REFUSED, f"{code}{words}")
    if code is not None and result.error is ErrorKind.INVALID_DOCUMENT:
        return out(PathOutcome.INVALID, result.detail)
    if code is not None:
        return out(PathOutcome.SERVER_ERROR, f"{code}{words}")
    # no HTTP answer at all: the instance itself was not reached (refused, reset, TLS to it)
    return out(PathOutcome.NO_ROUTE, result.detail)


@dataclass(frozen=True)
class Held:
    """One instance gated while another forwarded: since when, when last seen, over how many checks."""

    since: float
    last: float
    checks: int


@dataclass(frozen=True)
class PathMemory:
    """What the path probe keeps per APIService between checks: each instance's last own answer (with
    when, monotonic seconds), and each instance whose gate is held while another forwards."""

    answers: Mapping[Target, tuple[PathResult, float]] = field(default_factory=dict)
    held: Mapping[Target, Held] = field(default_factory=dict)


def remember(memory: PathMemory, fresh: Sequence[PathResult], now: float, keep: float = MEMORY_SECONDS,
             held_for: float = GATE_HELD_SECONDS) -> tuple[tuple[PathResult, ...], PathMemory]:
    """A gated answer is replaced by that instance's own last answer, if it has one young enough,
    unless the gate is that instance's own (held for `held_for` seconds while another instance
    forwards): then it is what its users get, a failure. Returns (the results to decide on, the
    memory to keep). `now` is monotonic seconds."""
    kept = {t: (r, at) for t, (r, at) in memory.answers.items() if now - at <= keep}
    held = dict(memory.held)
    forwarding = [r.instance for r in fresh if r.outcome is PathOutcome.PASSED]
    merged: list[PathResult] = []
    for result in fresh:
        if result.outcome is PathOutcome.GATED:
            others = [t.endpoint for t in forwarding if t != result.instance]
            if others and result.detail == GATED_DETAIL:
                was = held.get(result.instance)
                # checks in which every instance is gated neither extend nor end a hold; a pause
                # longer than the hold itself starts a new one
                now_held = (Held(now, now, 1) if was is None or now - was.last > held_for
                            else Held(was.since, now, was.checks + 1))
                held[result.instance] = now_held
                if now_held.checks >= 2 and now - now_held.since >= held_for:
                    merged.append(replace(result, outcome=PathOutcome.UNREACHABLE, detail=(
                        f"503 service unavailable to every request for {now - now_held.since:.0f}s while "
                        f"{', '.join(others)} forwarded them: this instance's proxy holds the APIService "
                        "unavailable (its own check fails, or it has not taken in the passing verdict)")))
                    continue
            prior = kept.get(result.instance)
            if prior is not None:
                merged.append(replace(prior[0], gated_now=True, remembered=True, latency=result.latency))
                continue
        elif result.outcome is not PathOutcome.NO_ROUTE:
            kept[result.instance] = (result, now)
            held.pop(result.instance, None)
        merged.append(result)
    live = {r.instance for r in fresh}
    return tuple(merged), PathMemory({t: v for t, v in kept.items() if t in live},
                                     {t: h for t, h in held.items() if t in live})
