"""The path probe's edge: asks each kube-apiserver instance for an APIService's discovery document,
as the probe identity, with the same prober as the endpoints, and hands the pure decision what the
answers mean (path.py). It also bounds the load: at most one path probe per instance per APIService
per interval, unless what the endpoints say has changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import urlsplit

from apiservice_operator.core.model import ErrorKind, Obj, ProbePlan, ProbeResult, Status, Target
from apiservice_operator.core.path import (
    AUTO_RETRY_SECONDS,
    KUBERNETES_SERVER_NAME,
    KUBERNETES_SERVICE,
    AutoChoice,
    PathEvidence,
    PathMemory,
    PathOutcome,
    PathProbeMode,
    PathResult,
    auto_due,
    choose_auto,
    classify,
    kubeconfig_via,
    livez_silent,
    path_plan,
    remember,
    resolve_instances,
)
from apiservice_operator.probing.shared import SharedRead

log = logging.getLogger(__name__)


class SlicesSource(Protocol):
    def slices(self, namespace: str, name: str) -> list[Obj]: ...


class ProbeAccount(Protocol):
    """The probe identity as the path checker needs it (kube/identity.ProbeIdentity in production)."""

    name: str
    namespace: str

    async def may_get(self, path: str) -> bool | None: ...


@dataclass(frozen=True)
class ClusterAccess:
    """How the operator itself reaches kube-apiserver: the server of its kubeconfig (or the
    in-cluster one) and the cluster CA it verifies with."""

    server: str
    ca: bytes | None
    in_cluster: bool


def effective_mode(mode: str, access: ClusterAccess) -> PathProbeMode:
    """The mode --path-probe names, `auto` resolved for where the operator runs (PathProbeMode):
    outside the cluster it stays AUTO, which the checker decides per set of instances."""
    return PathProbeMode(mode).effective(access.in_cluster)


@dataclass
class _Recent:
    results: tuple[PathResult, ...]
    at: float
    direct: frozenset[tuple[Target, bool]]
    route: PathProbeMode  # INSTANCES or KUBECONFIG: what was asked (`auto` may change it)
    gated: bool = False  # some instance answered kube-apiserver's own 503: it may lift at any moment


ProbeFn = Callable[[ProbePlan], Awaitable[list[ProbeResult]]]


@dataclass
class PathChecker:
    mode: str  # PathProbeMode.INSTANCES, KUBECONFIG, or AUTO outside the cluster (see effective_mode)
    access: ClusterAccess
    slices: SlicesSource
    probe: ProbeFn
    identity: ProbeAccount | None
    clock: Callable[[], float]
    pick: Sequence[str] = ()
    live_within: float = 2.5  # seconds: a live kube-apiserver answers /livez in milliseconds
    livez_after: float = 1.0  # seconds a path probe waits before /livez is asked beside it
    _memory: dict[str, PathMemory] = field(default_factory=dict)
    _recent: dict[str, _Recent] = field(default_factory=dict)
    # One /livez of the instances at a time, shared by every path probe that was already waiting when
    # it was sent: a burst of path probes that wait (a start beside 1,000 APIServices, a mass hang
    # relayed by kube-apiserver) then sends one per second at most, not one each (make bench: 1,000
    # at once slowed the start from 16.5 to 23.2 s)
    _livez: SharedRead[set[Target]] = field(default_factory=SharedRead)
    # `auto` outside the cluster: the instances or the kubeconfig's server, decided by the instances'
    # /livez at first use, when their set changes, and every auto_retry seconds while falling back
    # (refresh); never per check
    auto_retry: float = AUTO_RETRY_SECONDS
    _auto: AutoChoice | None = None
    _deciding: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _decides(self) -> bool:
        return self.mode == PathProbeMode.AUTO and not self.access.in_cluster

    def _instances(self) -> tuple[Target, ...]:
        return resolve_instances(self.slices.slices(*KUBERNETES_SERVICE), self.pick)

    def route(self) -> PathProbeMode:
        """What is asked now: INSTANCES or KUBECONFIG (`auto` resolved by the last refresh)."""
        if self.mode == PathProbeMode.KUBECONFIG:
            return PathProbeMode.KUBECONFIG
        if self._decides():
            return self._auto.mode if self._auto is not None else PathProbeMode.KUBECONFIG
        return PathProbeMode.INSTANCES

    def targets(self) -> tuple[tuple[Target, ...], str, str]:
        """(instances, the server name their certificate must carry, how they were found)."""
        if self.route() is PathProbeMode.KUBECONFIG:
            parts = urlsplit(self.access.server)
            host = parts.hostname or ""
            why = self._auto.why if self._decides() and self._auto is not None else ""
            return (Target(host, parts.port or 443),), host, kubeconfig_via(self.access.server, why)
        return self._instances(), KUBERNETES_SERVER_NAME, str(PathProbeMode.INSTANCES)

    async def refresh(self) -> None:
        """`auto` outside the cluster: ask each instance's /livez (verified as kubernetes.default.svc
        against the cluster CA, within live_within) where auto_due says so, and keep what it chose.
        One at a time: checks arriving meanwhile wait for a first choice or a new set of instances,
        not for a re-try of the same set (the kubeconfig's server stands meanwhile)."""
        if not self._decides():
            return
        instances = self._instances()
        if not auto_due(self._auto, instances, self.clock(), self.auto_retry):
            return
        if (self._deciding.locked() and self._auto is not None and self._auto.instances == instances):
            return
        async with self._deciding:
            instances = self._instances()
            if not auto_due(self._auto, instances, self.clock(), self.auto_retry):
                return
            silent = await self._silent_within(instances, KUBERNETES_SERVER_NAME)
            before, self._auto = self._auto, choose_auto(instances, silent, self.clock())
        chosen = self._auto
        through = (f"each kube-apiserver instance ({len(chosen.instances)} answer /livez from here)"
                   if chosen.mode is PathProbeMode.INSTANCES else kubeconfig_via(self.access.server, chosen.why))
        changed = before is None or (before.mode, before.why) != (chosen.mode, chosen.why)
        log.log(logging.INFO if changed else logging.DEBUG, "path probe (auto): through %s", through)

    def forget(self, name: str) -> None:
        self._memory.pop(name, None)
        self._recent.pop(name, None)

    def due(self, name: str, interval: float) -> bool:
        recent = self._recent.get(name)
        return recent is None or self.clock() - recent.at >= interval

    async def check(self, name: str, plan: ProbePlan, direct: Sequence[ProbeResult] | None,
                    interval: float) -> tuple[tuple[PathResult, ...], bool]:
        """Each instance's answer for one check, and whether the instances were asked now (then the
        answers are fresh and settle() must follow, once the endpoints' answers are known). `direct`
        None: the endpoints are being probed at the same time (the path was due anyway); otherwise a
        recent settled answer is reused unless the endpoints' answers changed since it was taken."""
        await self.refresh()
        recent = self._recent.get(name)
        if (recent is not None and direct is not None and self.clock() - recent.at < interval
                and recent.direct == _signature(direct) and recent.route is self.route() and not recent.gated):
            # a gated answer is not reused: kube-apiserver lifts its 503 as soon as its own check passes
            # (milliseconds after a repair), and reusing it held a recovered verdict back by the interval
            return recent.results, False
        return tuple(await self.ask(plan)), True

    def settle(self, name: str, fresh: tuple[PathResult, ...], direct: Sequence[ProbeResult]) -> tuple[PathResult, ...]:
        """Fresh answers, with each gated one replaced by that instance's last own answer (path.remember).
        When the endpoints have just come back, what the instances met while the server was down is
        about that outage, not the path: it is forgotten (else a recovery reads as ControlPlaneUnreachable)."""
        now = self.clock()
        merged, self._memory[name] = remember(self._kept(name, direct), fresh, now)
        self._recent[name] = _Recent(merged, now, _signature(direct), self.route(),
                                     any(r.outcome is PathOutcome.GATED for r in fresh))
        return merged

    def recall(self, name: str, fresh: Sequence[PathResult], direct: Sequence[ProbeResult]) -> tuple[PathResult, ...]:
        """Fresh answers read as settle() would read them, nothing kept: explain says what the
        controller's next check would decide, remembered answers and held gates included."""
        merged, _ = remember(self._kept(name, direct), fresh, self.clock())
        return merged

    def _kept(self, name: str, direct: Sequence[ProbeResult]) -> PathMemory:
        """The memory fresh answers are read against: none when the endpoints have just come back."""
        recent = self._recent.get(name)
        if any(p.ok for p in direct) and recent is not None and not any(ok for _, ok in recent.direct):
            return PathMemory()
        return self._memory.get(name, PathMemory())

    async def ask(self, plan: ProbePlan) -> list[PathResult]:
        """Each instance's answer now, read for who answered; nothing kept (explain uses it too)."""
        await self.refresh()
        instances, server_name, _ = self.targets()
        if not instances:
            return []
        # a request that finds no answer in time says nothing about the API when kube-apiserver
        # itself is what does not answer (frozen, overloaded): /livez tells, asked while the request
        # is still waiting. Asked only after the timeout, it raced with a freeze ending: a frozen
        # instance that had just come back answered /livez at once and the path took the blame
        # (the fault suite's 10 s SIGSTOP, once in a dozen runs).
        started = asyncio.get_running_loop().time()
        asking = asyncio.ensure_future(self.probe(path_plan(plan, instances, self.access.ca, server_name)))
        livez: asyncio.Future[set[Target]] | None = None
        try:
            done, _ = await asyncio.wait({asking}, timeout=self.livez_after)
            if not done:
                livez = self._livez.read(tuple(instances), started, lambda: self._answering(instances, server_name))
            raw = await asking
        except BaseException:
            asking.cancel()
            raise
        classified = [classify(r) for r in raw]
        silent = [r.target for r in raw if r.error is ErrorKind.TIMEOUT]
        if silent:
            alive = await asyncio.shield(livez) if livez is not None else await self._answering(silent, server_name)
            classified = [r if r.instance not in silent or r.instance in alive else
                          replace(r, outcome=PathOutcome.NO_ROUTE,
                                  detail=f"kube-apiserver itself does not answer (/livez too): {r.detail}")
                          for r in classified]
        return classified

    def _livez_plan(self, instances: Sequence[Target], server_name: str) -> ProbePlan:
        return ProbePlan(targets=tuple(instances), path="/livez", group_version="", server_name=server_name,
                         ca_bundle=self.access.ca, insecure_skip_tls_verify=False)

    async def _answering(self, instances: Sequence[Target], server_name: str) -> set[Target]:
        # a late answer is a frozen instance that came back meanwhile: it did not answer in time
        answers = await self.probe(self._livez_plan(instances, server_name))
        return set(instances) - livez_silent(instances, answers, self.live_within).keys()

    async def _silent_within(self, instances: Sequence[Target], server_name: str) -> dict[Target, str]:
        """The instances that do not answer /livez within live_within, and why: each asked on its own
        and waited for no longer (an address not routable from here would hold the whole budget)."""
        async def one(instance: Target) -> list[ProbeResult]:
            try:
                return await asyncio.wait_for(self.probe(self._livez_plan((instance,), server_name)),
                                              self.live_within)
            except TimeoutError:
                return []
        answers = [r for found in await asyncio.gather(*(one(t) for t in instances)) for r in found]
        return livez_silent(instances, answers, self.live_within)

    async def evidence(self, apiservice: Obj, plan: ProbePlan, results: tuple[PathResult, ...]) -> PathEvidence:
        """The answers with what the pure decision weighs them against: kube-apiserver's own
        condition, and (only after a refusal) whether its RBAC lets the probe identity read discovery."""
        allowed = None
        if self.identity is not None and any(r.outcome is PathOutcome.REFUSED for r in results):
            allowed = await self.identity.may_get(plan.path)
        kube = kube_available(apiservice)
        _, _, via = self.targets()
        identity = f"{self.identity.namespace}/{self.identity.name}" if self.identity else ""
        return PathEvidence(via=via, results=results, identity=identity, identity_allowed=allowed,
                            kube_status=kube[0], kube_message=kube[1], kube_since=kube_available_since(apiservice))


def _signature(direct: Sequence[ProbeResult]) -> frozenset[tuple[Target, bool]]:
    return frozenset((p.target, p.ok) for p in direct)


def kube_available(apiservice: Obj) -> tuple[Status | None, str]:
    """kube-apiserver's own Available condition: evidence to quote, never something we write."""
    cond = _kube_condition(apiservice)
    if cond is None:
        return None, ""
    try:
        return Status(str(cond.get("status"))), str(cond.get("message") or "")
    except ValueError:
        return None, ""


def kube_available_since(apiservice: Obj) -> str:
    """When kube-apiserver's own Available last changed status (RFC 3339), "" when unknown."""
    cond = _kube_condition(apiservice)
    return str(cond.get("lastTransitionTime") or "") if cond is not None else ""


def _kube_condition(apiservice: Obj) -> Obj | None:
    return next((c for c in (apiservice.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Available"), None)
