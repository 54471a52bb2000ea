"""The probe loop: takes due APIServices from the queue, resolves, probes, decides, writes.

Resolution is immediate and needs no probe slot, so a decision such as MissingEndpoints is never
held up behind slow probes (kube-aggregator's 5 workers are: DESIGN 6b). Probes run under a
semaphore of --concurrency; a change to an APIService cancels its probe in flight and starts over.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from apiservice_operator.check.metrics import Metrics
from apiservice_operator.check.schedule import ProbeQueue
from apiservice_operator.core.blast import group_version
from apiservice_operator.core.decide import changed, decide, our_conditions
from apiservice_operator.core.model import (
    WRITES_IN_FLIGHT,
    Condition,
    ErrorKind,
    Obj,
    ProbeResult,
    Resolution,
    Status,
    Target,
    WriteForbidden,
)
from apiservice_operator.core.path import PathEvidence, PathResult
from apiservice_operator.core.resolve import resolve
from apiservice_operator.core.settings import Settings
from apiservice_operator.core.transitions import EventSpec, event_for_transition
from apiservice_operator.probing.pathcheck import PathChecker

log = logging.getLogger("apiservice_operator")
RETRY_BASE = 1.0
# how a probe can fail when nothing at the address answers: news for every APIService behind it.
# Not TLS (each APIService brings its own caBundle) nor an HTTP status (each asks its own path).
SILENT_OR_GONE = frozenset({ErrorKind.TIMEOUT, ErrorKind.REFUSED, ErrorKind.CONNECTION})

Writer = Callable[[str, Sequence[Condition]], Awaitable[bool]]
EventSink = Callable[[str, str | None, EventSpec], Awaitable[None]]
ProbeFn = Callable[..., Awaitable[list[ProbeResult]]]


class Inputs(Protocol):
    """What the watches know (kopf indexes in production, dicts in tests)."""

    def apiservice(self, name: str) -> Obj | None: ...
    def service(self, namespace: str, name: str) -> Obj | None: ...
    def slices(self, namespace: str, name: str) -> list[Obj]: ...
    def apiservice_names(self) -> Iterable[str]: ...
    def blocked_namespaces(self, group_version: str) -> list[str]: ...


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Stats:
    checks: int = 0
    probes: int = 0
    writes: int = 0
    write_errors: int = 0
    transitions: int = 0
    last_sweep_done: float | None = None


@dataclass
class Controller:
    settings: Settings
    inputs: Inputs
    probe: ProbeFn
    write: Writer
    now: Callable[[], str] = utc_now
    metrics: Metrics = field(default_factory=Metrics)
    record_event: EventSink | None = None
    path: PathChecker | None = None  # None: the path probe is off, the endpoints alone decide
    # whether an endpoint has answered nothing for a whole budget (the prober's silence.py)
    silent: Callable[[Target], bool] | None = None
    stats: Stats = field(default_factory=Stats)
    problems: dict[str, str] = field(default_factory=dict)  # what keeps us from working, for /readyz

    def __post_init__(self) -> None:
        self.queue = ProbeQueue(lambda: asyncio.get_running_loop().time())
        self._probe_slots = asyncio.Semaphore(self.settings.concurrency)
        # 16 at once wrote ~50 verdicts a second at start-up and in a mass hang (make bench, N = 1,000): each
        # write waits on kube-apiserver, not on us
        self._write_slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # what we wrote last, and the resourceVersion we saw then: until the watch brings a newer
        # object, the index still shows the old status and must not cause a second identical write
        self._written: dict[str, tuple[tuple[Condition, ...], str]] = {}
        # a sweep is complete when every handled APIService has been checked once since it began
        self._sweep_pending: set[str] = set()
        # consecutive checks that did not end Available=True: such APIServices are re-checked
        # sooner (1 s, 2 s, 4 s ... up to the interval), so a recovery shows within seconds, as
        # kube-aggregator's rate-limited requeue of failed checks does
        self._failing: dict[str, int] = {}
        self._sweep_started: float | None = None
        # APIServices whose last check probed (not Local, not failed before a probe): they set the pace
        self._probed: set[str] = set()
        self._phased: set[str] = set()  # given a random phase in the periodic schedule
        # which APIServices each endpoint serves, and whether it answered when last probed
        self._users: dict[Target, set[str]] = {}
        self._targets_of: dict[str, frozenset[Target]] = {}
        self._answering: dict[Target, bool] = {}
        self._latency: dict[str, dict[Target, float]] = {}  # each endpoint's last passing answer, seconds

    # --- triggers -------------------------------------------------------------------------------
    def changed_now(self, names: Iterable[str]) -> None:
        for name in names:
            self.queue.schedule(name, self.settings.debounce, urgent=True)

    def forget(self, name: str) -> None:
        self.queue.forget(name)
        self._written.pop(name, None)
        self._failing.pop(name, None)
        self._probed.discard(name)
        self._phased.discard(name)
        self._share(name, [])
        self._latency.pop(name, None)
        if self.path is not None:
            self.path.forget(name)
        self.metrics.forget(name)
        self._sweep_done(name)
        task = self._inflight.pop(name, None)
        if task is not None:
            task.cancel()

    def periodic_interval(self) -> float:
        """Few APIServices are re-probed more often (a hang shows sooner), many less often, so the
        periodic probes stay within --max-probe-rate whatever N is."""
        s = self.settings
        shortest = min(s.min_probe_interval, s.probe_interval)
        return min(s.probe_interval, max(shortest, len(self._probed) / s.max_probe_rate))

    def _next_periodic(self, name: str) -> None:
        interval = self.periodic_interval()
        self.metrics.probe_interval.set(interval)
        failures = self._failing.get(name, 0)
        if failures:
            delay = min(interval, RETRY_BASE * 2 ** (failures - 1))
        elif name not in self._phased:
            # the first periodic probe at a random point of the interval: APIServices that arrive
            # together (start-up, a burst) would otherwise be probed in one burst every interval,
            # and their shared servers answer a burst slowly (measured: SlowDiscovery and timeouts
            # flapping at N=1000 where 100 probes/s spread evenly are easy)
            self._phased.add(name)
            delay = interval * random.random()
        else:
            delay = interval * (1 - 0.1 * random.random())
        self.queue.schedule(name, delay, urgent=False)

    # --- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                for name, urgent in await self.queue.take():
                    self._start(name, urgent)
                self.metrics.queue_depth.set(len(self.queue))
                self.metrics.inflight.set(len(self._inflight))
        finally:
            tasks = list(self._inflight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, name: str, urgent: bool) -> None:
        running = self._inflight.get(name)
        if running is not None:
            if not urgent:
                return  # a periodic re-check while a check runs adds nothing
            running.cancel()
        self._inflight[name] = asyncio.create_task(self._check_and_reschedule(name), name=f"check:{name}")

    async def _check_and_reschedule(self, name: str) -> None:
        me = asyncio.current_task()
        try:
            await self.check(name)
            self._sweep_done(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("check failed name=%s", name)
            self.queue.schedule(name, 1.0, urgent=True)
        finally:
            if self._inflight.get(name) is me:
                del self._inflight[name]
                if self.inputs.apiservice(name) is not None:
                    self._next_periodic(name)

    async def check(self, name: str) -> None:
        apiservice = self.inputs.apiservice(name)
        if apiservice is None:
            self.forget(name)
            return
        self.stats.checks += 1
        ref = (apiservice.get("spec") or {}).get("service") or {}
        namespace, service_name = ref.get("namespace") or "", ref.get("name") or ""
        service = self.inputs.service(namespace, service_name) if ref else None
        slices = self.inputs.slices(namespace, service_name) if ref else []
        resolution = resolve(apiservice, service, slices)
        probes: list[ProbeResult] = []
        path: PathEvidence | None = None
        plan = resolution.plan
        if plan is None:
            self._probed.discard(name)
        else:
            self._probed.add(name)
            checker, interval = self.path, self.periodic_interval()
            if checker is not None and self._all_silent(plan.targets):
                # kube-apiserver would relay to the same silent endpoints: a path probe would only wait out
                # its budget (in a mass hang each check did, 51 checks/s at most); the endpoints decide
                checker = None
            through: tuple[PathResult, ...] = ()
            fresh = False
            async with self._probe_slots:
                self.stats.probes += 1
                if checker is not None and checker.due(name, interval):
                    # side by side: a hang costs one budget, not two
                    probes, (through, fresh) = await asyncio.gather(
                        self.probe(plan), checker.check(name, plan, None, interval))
                else:
                    probes = await self.probe(plan)
                    if checker is not None and self._all_silent(plan.targets):
                        # they have just gone silent: asking kube-apiserver now would wait out a second
                        # budget (a hang showed after 10 s, make bench), and it relays to them anyway
                        checker = None
                    if checker is not None:
                        through, fresh = await checker.check(name, plan, probes, interval)
            self.metrics.observe_probes(name, probes)
            self._share(name, probes)
            probes = self._paced(name, probes)
            self.metrics.observe_certificates(name, plan, probes)
            if checker is not None and fresh:
                self.metrics.observe_path(through)
                through = checker.settle(name, through, probes)
            apiservice = self.inputs.apiservice(name)  # fresher previous conditions after the wait
            if apiservice is None:
                return
            if checker is not None:
                path = await checker.evidence(apiservice, plan, through)
        await self._settle(name, apiservice, resolution, probes, path)

    def _all_silent(self, targets: Iterable[Target]) -> bool:
        return self.silent is not None and all(self.silent(t) for t in targets)

    def _paced(self, name: str, probes: list[ProbeResult]) -> list[ProbeResult]:
        """A server's pace is judged on two answers in a row: a passing probe's latency is taken as
        the smaller of this answer's and the previous one's from that endpoint. A one-off spike
        (kube-apiserver's own resync of 1,000 APIServices hitting the same servers every 30 s, make
        bench) then neither moves the message's bucket nor raises SlowDiscovery, each a status
        write; a slow pace shows at its second answer. The metrics have every answer as it was."""
        last = self._latency.get(name, {})
        self._latency[name] = {p.target: p.latency for p in probes if p.ok}
        return [replace(p, latency=min(p.latency, last[p.target])) if p.ok and p.target in last else p
                for p in probes]

    def _share(self, name: str, probes: Sequence[ProbeResult]) -> None:
        """What one APIService's probe learned about a shared endpoint is news for every APIService
        behind it: when the endpoint stops answering (or answers again) they are checked now, not at
        their turn in the interval (make bench: 1,000 behind one hung server). Only a change is
        news, so a server that stays down costs nothing more."""
        targets = frozenset(p.target for p in probes)
        before = self._targets_of.pop(name, frozenset())
        for gone in before - targets:
            users = self._users.get(gone)
            if users is not None:
                users.discard(name)
                if not users:
                    del self._users[gone]
                    self._answering.pop(gone, None)
        for target in targets - before:
            self._users.setdefault(target, set()).add(name)
        if targets:
            self._targets_of[name] = targets
        for probe in probes:
            answering = probe.error not in SILENT_OR_GONE
            known = self._answering.get(probe.target)
            self._answering[probe.target] = answering
            if known is None or known == answering:
                continue
            # not urgent: a sibling whose check is already running finishes it rather than start over
            for sibling in self._users[probe.target] - {name}:
                self.queue.schedule(sibling, self.settings.debounce, urgent=False)

    async def _settle(self, name: str, apiservice: Obj, resolution: Resolution, probes: list[ProbeResult],
                      path: PathEvidence | None = None) -> None:
        types = self.settings.types
        previous = our_conditions(apiservice.get("status"), types)
        rv = str((apiservice.get("metadata") or {}).get("resourceVersion", ""))
        written = self._written.get(name)
        if written is not None and written[1] == rv:
            previous = list(written[0])
        blocked = self.inputs.blocked_namespaces(group_version(apiservice))
        self.metrics.blocked_namespaces.labels(name=name).set(len(blocked))
        new = decide(resolution, probes, previous, self.now(), types, self.settings.probe_timeout, path,
                     self.settings.cert_expiry_warning * 86400, blocked)
        self.metrics.observe_conditions(name, new[0])
        if new[0].status is Status.TRUE:
            self._failing.pop(name, None)
        else:
            self._failing[name] = self._failing.get(name, 0) + 1
        if not changed(new, previous):
            return
        before = {c.type: c for c in previous}
        async with self._write_slots:
            try:
                exists = await self.write(name, new)
            except WriteForbidden as exc:
                self.problems["write"] = str(exc)
                log.error("%s", exc)
                self.stats.write_errors += 1
                self.metrics.status_write_errors.inc()
                raise
            except Exception as exc:
                self.stats.write_errors += 1
                self.metrics.status_write_errors.inc()
                log.warning("status write failed name=%s error=%s", name, exc)
                raise
        self.problems.pop("write", None)
        if not exists:
            self.forget(name)
            return
        self.stats.writes += 1
        self.metrics.status_writes.inc()
        self._written[name] = (tuple(new), rv)
        for cond in new:
            prior = before.get(cond.type)
            if prior is None or prior.status != cond.status or prior.reason != cond.reason:
                self.stats.transitions += 1
                self.metrics.transitions.labels(name=name, type=cond.type, status=str(cond.status),
                                                reason=cond.reason).inc()
                log.info(
                    "transition name=%s type=%s status=%s reason=%s previous=%s message=%r",
                    name, cond.type, cond.status, cond.reason,
                    f"{prior.status}/{prior.reason}" if prior else "none", cond.message)

        event = event_for_transition(before, new[0], new[1])
        if event is not None and self.record_event is not None:
            uid = (apiservice.get("metadata") or {}).get("uid")
            await self.record_event(name, uid, event)

    def _sweep_done(self, name: str) -> None:
        self._sweep_pending.discard(name)
        if self._sweep_pending:
            return
        loop_now = asyncio.get_running_loop().time()
        if self._sweep_started is not None:
            self.metrics.last_sweep.set(time.time())
            self.metrics.sweep_duration.set(loop_now - self._sweep_started)
            self.stats.last_sweep_done = loop_now
        names = set(self.inputs.apiservice_names())
        self.metrics.apiservices.set(len(names))
        self._sweep_pending = names
        self._sweep_started = loop_now if names else None

    def schedule_all(self) -> None:
        for name in self.inputs.apiservice_names():
            if name not in self.queue and name not in self._inflight:
                self.queue.schedule(name, self.settings.debounce, urgent=True)
