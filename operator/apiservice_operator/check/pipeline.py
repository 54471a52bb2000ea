"""One check of one APIService, from inputs to evidence to verdict: gather what the watches know,
resolve, probe the endpoints, ask the path through kube-apiserver, decide. The controller runs it and
writes what it returns; explain runs the same steps traced and renders them. A new hop is added
here, once, so that the verdict and its explanation cannot drift apart.

The two runs differ only where they must:
- live (the controller): the endpoints' silence is judged (core/silence), the path is asked once
  per interval unless the endpoints' answers changed, gated answers are replaced by what each
  instance last said itself (PathChecker.settle), latency is paced (Pacing), and the previous
  conditions are what we last wrote;
- traced (explain): every request is sent and answered on its own, each endpoint's TLS handshake is
  looked at, and nothing is remembered.
Evidence shared by a whole round (one /livez of the instances for every path probe waiting on it)
is read through probing/shared.SharedRead inside the path checker: the same place takes the next
hop's per-instance reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from apiservice_operator.check.pacing import Pacing
from apiservice_operator.core.blast import group_version
from apiservice_operator.core.clientview import ClientView
from apiservice_operator.core.consumers import is_metrics_group, service_host
from apiservice_operator.core.decide import decide, our_conditions
from apiservice_operator.core.model import (
    Condition,
    ErrorKind,
    Handshake,
    Obj,
    ProbePlan,
    ProbeResult,
    Resolution,
    Status,
    Target,
    Verdict,
)
from apiservice_operator.core.path import PathEvidence, PathResult, reaching
from apiservice_operator.core.resolve import resolve
from apiservice_operator.core.settings import Settings
from apiservice_operator.probing.pathcheck import PathChecker

log = logging.getLogger(__name__)
CHECK_FAILED = "CheckFailed"
PROBE_UNAUTHORIZED = "ProbeUnauthorized"
ProbeFn = Callable[[ProbePlan], Awaitable[list[ProbeResult]]]
Inspect = Callable[[Target, str, float], Awaitable[Handshake]]


def _check_failed(name: str, exc: Exception) -> Resolution:
    log.warning("check of %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
    return Resolution(verdict=Verdict(
        Status.UNKNOWN, CHECK_FAILED,
        f"the check itself failed ({type(exc).__name__}: {str(exc)[:300]}); retried with backoff, and the "
        "operator's log has the details"))


class ClientsReader(Protocol):
    """Reads each instance's aggregated discovery and /openapi/v3, and where they are wrong the
    server's own documents (probing/clientview.ClientViewReader)."""

    async def view(self, instances: Sequence[Target], server_name: str, plan: ProbePlan,
                   own_resources: Sequence[str], everything: bool = False, ask: bool = True) -> ClientView: ...


class Inputs(Protocol):
    """What the watches know (kopf's indexes in production, dicts in tests)."""

    def apiservice(self, name: str) -> Obj | None: ...
    def service(self, namespace: str, name: str) -> Obj | None: ...
    def slices(self, namespace: str, name: str) -> list[Obj]: ...
    def apiservice_names(self) -> Iterable[str]: ...
    def blocked_namespaces(self, group_version: str) -> list[str]: ...
    def ready_for(self, name: str) -> bool: ...  # what this APIService's check reads has been listed


@dataclass(frozen=True)
class Gathered:
    """The inputs of one check, as the watches had them when it began."""

    apiservice: Obj
    service: Obj | None
    slices: list[Obj]
    resolution: Resolution


def gather(inputs: Inputs, name: str) -> Gathered | None:
    apiservice = inputs.apiservice(name)
    if apiservice is None:
        return None
    ref = (apiservice.get("spec") or {}).get("service") or {}
    namespace, service_name = ref.get("namespace") or "", ref.get("name") or ""
    service = inputs.service(namespace, service_name) if ref else None
    slices = inputs.slices(namespace, service_name) if ref else []
    return Gathered(apiservice, service, slices, resolve(apiservice, service, slices))


@dataclass
class Evidence:
    """What the hops found. `measured` are the endpoints' answers as they came (for metrics and the
    sharing of endpoints), `probes` as the decision weighs them (paced); `asked` the instances'
    answers when they were asked in this check (None: a recent answer was reused), `through` what the
    decision weighs."""

    measured: list[ProbeResult] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    asked: tuple[PathResult, ...] | None = None
    through: tuple[PathResult, ...] = ()
    path: PathEvidence | None = None
    handshakes: tuple[Handshake, ...] = ()  # traced only, in the plan's target order
    via_path: bool = False  # the path through kube-apiserver was part of this check
    clients: ClientView | None = None  # the group/version in each instance's aggregated discovery


@dataclass(frozen=True)
class Outcome:
    name: str
    gathered: Gathered
    apiservice: Obj  # as the watches had it once the evidence was in: its conditions are the previous ones
    evidence: Evidence
    previous: list[Condition]
    conditions: tuple[Condition, Condition]  # (Available, Degraded)
    blocked: list[str]
    stalled: list[str] = field(default_factory=list)  # the HPAs a failing metrics API stalls


# namespace/name of each HPA that a metrics group's outage stalls (kube/autoscalers.py), given the
# group and its Service's host name
Consumers = Callable[[str, "str | None"], Awaitable[list[str]]]


Remembered = Callable[[str, Obj], "list[Condition] | None"]


@dataclass
class Pipeline:
    settings: Settings
    inputs: Inputs
    probe: ProbeFn  # the endpoints, silence judged (the prober's probe_discovery)
    path: PathChecker | None = None  # None: the path probe is off, the endpoints alone decide
    now: Callable[[], str] = lambda: ""
    # whether an endpoint has answered nothing for a whole budget (core/silence)
    silent: Callable[[Target], bool] | None = None
    probe_every: ProbeFn | None = None  # traced: every request sent, each its own answer (default: probe)
    inspect: Inspect | None = None  # traced: each endpoint's TLS handshake, looked at unverified
    pacing: Pacing = field(default_factory=Pacing)
    slots: asyncio.Semaphore | None = None  # the live run's probe slots (--concurrency)
    on_probe: Callable[[], None] | None = None  # the live run has a slot and sends its probes
    clients: ClientsReader | None = None  # the clients' view; None: not read
    consumers: Consumers | None = None  # who a failing metrics API stalls; None: not read
    # why the probes go without the probe identity's token, when they do (its renewal failed)
    token_problem: Callable[[], str | None] = lambda: None

    async def run(self, name: str, *, interval: float = 0.0, remembered: Remembered | None = None,
                  traced: bool = False) -> Outcome | None:
        """One check; None when the APIService is gone (before it or while it waited on the probes).
        `interval`: the periodic interval (how recent a path answer may be reused); `remembered`: what
        we last wrote, where the watch has not brought it back yet."""
        gathered = gather(self.inputs, name)
        if gathered is None:
            return None
        apiservice, plan = gathered.apiservice, gathered.resolution.plan
        resolution = gathered.resolution
        evidence = Evidence()
        if plan is not None:
            try:
                evidence = await (self._traced(name, plan) if traced else self._live(name, plan, interval))
                fresher = self.inputs.apiservice(name)  # fresher previous conditions after the wait
                if fresher is None:
                    return None
                apiservice = fresher
                if self.path is not None and evidence.via_path:
                    evidence.path = await self.path.evidence(apiservice, plan, evidence.through)
                    # what clients read matters only where an endpoint answers and a request through
                    # kube-apiserver reaches the server, as the verdict counts it (core/path.reaching: a
                    # relayed 500 beside an endpoint that passes is Available too, and a verdict without
                    # the clients' view was one more write at the moment a server began to fail):
                    # elsewhere that hop names the verdict, and reading more through a hung server (its
                    # OpenAPI document) would only hold the verdict back (an endpoint that refuses our
                    # anonymous probe, where no token may go, answers too)
                    reached = reaching(any(p.ok for p in evidence.probes))
                    reachable = any(p.ok or (plan.insecure_skip_tls_verify and p.error is ErrorKind.UNAUTHORIZED)
                                    for p in evidence.probes) and any(
                        r.outcome in reached for r in evidence.path.results)
                    if self.clients is not None and (reachable or traced):
                        instances, server_name, _ = self.path.targets()
                        own = sorted({r for p in evidence.probes if p.ok for r in p.resources})
                        # the server's own documents are asked at an endpoint that answers, and only where
                        # one does: where none does, that hop names the verdict and needs no more requests
                        answering = tuple(p.target for p in evidence.probes if p.ok)[:1]
                        asked = replace(plan, targets=answering) if answering else plan
                        evidence.clients = await self.clients.view(instances, server_name, asked, own,
                                                                   everything=traced, ask=bool(answering))
            except Exception as exc:
                # every check ends in a verdict: one that cannot gather its evidence says so, rather
                # than leave the last verdict standing while it retries
                resolution, evidence = _check_failed(name, exc), Evidence()
        previous = our_conditions(apiservice.get("status"), self.settings.types)
        if remembered is not None:
            previous = remembered(name, apiservice) or previous
        blocked = self.inputs.blocked_namespaces(group_version(apiservice))
        stalled: list[str] = []
        try:
            conditions = self._decide(resolution, evidence, previous, blocked)
            group = (apiservice.get("spec") or {}).get("group") or ""
            if self.consumers is not None and conditions[0].status is not Status.TRUE and is_metrics_group(group):
                stalled = await self.consumers(group, service_host(apiservice))
                conditions = self._decide(resolution, evidence, previous, blocked, stalled)
        except Exception as exc:
            resolution, evidence = _check_failed(name, exc), Evidence()
            conditions = self._decide(resolution, evidence, previous, blocked)
        return Outcome(name, gathered, apiservice, evidence, previous, conditions, blocked, stalled)

    def _decide(self, resolution: Resolution, evidence: Evidence, previous: list[Condition],
                blocked: list[str], stalled: list[str] | None = None) -> tuple[Condition, Condition]:
        s = self.settings
        available, degraded = decide(resolution, evidence.probes, previous, self.now(), s.types, s.probe_timeout,
                                     evidence.path, s.cert_expiry_warning * 86400, blocked, evidence.clients,
                                     stalled or ())
        problem = self.token_problem() if available.reason == PROBE_UNAUTHORIZED else None
        if problem:
            # refused because we sent no token: our fault, not the server's, and the verdict says so
            available = replace(available, message=f"the probes went without the probe identity's token ({problem}); "
                                                    f"{available.message}")
        return available, degraded

    def traced(self, probe_every: ProbeFn, inspect: Inspect) -> Pipeline:
        """This pipeline for explain: the same inputs, hops and verdict, every request sent and each
        handshake looked at; no probe slots taken, no probes counted."""
        return replace(self, probe_every=probe_every, inspect=inspect, slots=None, on_probe=None)

    def forget(self, name: str) -> None:
        self.pacing.forget(name)
        if self.path is not None:
            self.path.forget(name)

    def all_silent(self, targets: Iterable[Target]) -> bool:
        return self.silent is not None and all(self.silent(t) for t in targets)

    async def _live(self, name: str, plan: ProbePlan, interval: float) -> Evidence:
        checker = self.path
        asked: tuple[PathResult, ...] = ()
        fresh = False
        async with self.slots if self.slots is not None else contextlib.nullcontext():
            if self.on_probe is not None:
                self.on_probe()
            if checker is not None and self.all_silent(plan.targets):
                # kube-apiserver would relay to the same silent endpoints: a path probe would only wait out
                # its budget (in a mass hang each check did, 51 checks/s at most); the endpoints decide.
                # Asked once the slot is ours: a check that waited for it while they went silent had
                # its path probe wait out a budget in the slot, and the last 150 of 1,000 in a mass
                # hang flipped at 20 a second (make bench)
                checker = None
            if checker is not None and checker.due(name, interval):
                # side by side: a hang costs one budget, not two
                asking = asyncio.ensure_future(checker.check(name, plan, None, interval))
                try:
                    measured = await self.probe(plan)
                except BaseException:
                    asking.cancel()
                    raise
                if self.all_silent(plan.targets):
                    # the probe waited on the endpoint's lane while it went silent: kube-apiserver relays
                    # to it, and waiting for its answer held the slot for a budget (the mass hang's tail)
                    asking.cancel()
                    checker = None
                else:
                    asked, fresh = await asking
            else:
                measured = await self.probe(plan)
                if checker is not None and self.all_silent(plan.targets):
                    # they have just gone silent: asking kube-apiserver now would wait out a second
                    # budget (a hang showed after 10 s, make bench), and it relays to them anyway
                    checker = None
                if checker is not None:
                    asked, fresh = await checker.check(name, plan, measured, interval)
        probes = self.pacing.paced(name, measured)
        if checker is None:
            return Evidence(measured, probes)
        through = checker.settle(name, asked, probes) if fresh else asked
        return Evidence(measured, probes, asked if fresh else None, through, via_path=True)

    async def _traced(self, name: str, plan: ProbePlan) -> Evidence:
        budget = self.settings.probe_timeout
        probe = self.probe_every or self.probe
        inspect = self.inspect
        handshakes: Sequence[Handshake] = ()

        async def look() -> Sequence[Handshake]:
            if inspect is None:
                return ()
            return await asyncio.gather(*(inspect(t, plan.server_name, budget) for t in plan.targets))

        async def ask() -> list[PathResult]:
            return await self.path.ask(plan) if self.path is not None else []

        measured, handshakes, asked = await asyncio.gather(probe(plan), look(), ask())
        through = self.path.recall(name, asked, measured) if self.path is not None else ()
        return Evidence(measured, list(measured), tuple(asked), through, None, tuple(handshakes),
                        via_path=self.path is not None)

