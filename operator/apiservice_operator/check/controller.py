"""The probe loop: takes due APIServices from the queue, runs the check pipeline, writes what changed.

Resolution is immediate and needs no probe slot, so a decision such as MissingEndpoints is never
held up behind slow probes (kube-aggregator's 5 workers are: DESIGN 6b). Probes run under a
semaphore of --concurrency; a change to an APIService cancels its check in flight and starts over.
What it keeps between checks is in named parts: the queue (check/schedule), the periodic cadence
(check/cadence), the retry policy for failed checks and writes (core/retry), the endpoints that
APIServices share (check/sharing), a server's pace (check/pacing, in the pipeline), our last writes
and the sweep (check/memory), and the pace of status writes (check/writegate).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from apiservice_operator.check.cadence import Cadence
from apiservice_operator.check.memory import BeforeWaiting, Sweep, Written
from apiservice_operator.check.metrics import Metrics
from apiservice_operator.check.pipeline import ClientsReader, Consumers, Inputs, Outcome, Pipeline, ProbeFn
from apiservice_operator.check.schedule import ProbeQueue
from apiservice_operator.check.sharing import EndpointSharing
from apiservice_operator.check.writegate import WriteGate
from apiservice_operator.core.backends import BackendChange
from apiservice_operator.core.decide import AWAITING, changed
from apiservice_operator.core.model import (
    WRITES_IN_FLIGHT,
    Condition,
    Status,
    Target,
    WriteDeferred,
    WriteFailed,
    WriteForbidden,
)
from apiservice_operator.core.retry import CHEAP_RETRY_BASE, RetryPolicy, cheap_retry_cap, retry_base
from apiservice_operator.core.settings import Settings
from apiservice_operator.core.transitions import EventSpec, event_for_transition
from apiservice_operator.probing.pathcheck import PathChecker

log = logging.getLogger("apiservice_operator")

# the resourceVersion the write made ("" when unknown), None when the APIService is gone
Writer = Callable[[str, Sequence[Condition]], Awaitable[str | None]]
UNLISTED_RETRY = 0.2  # seconds: a Service's watches list in a round trip or two

EventSink = Callable[[str, str | None, EventSpec], Awaitable[None]]

__all__ = ["Controller", "Inputs", "Stats", "utc_now"]


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
    clients: ClientsReader | None = None  # each instance's aggregated discovery (the clients' view)
    consumers: Consumers | None = None  # the HPAs a failing metrics API stalls (kube/autoscalers.py)
    stats: Stats = field(default_factory=Stats)
    problems: dict[str, str] = field(default_factory=dict)  # what keeps us from working, for /readyz
    # failed checks (not Available=True) and failed writes are re-tried sooner than the interval (1 s,
    # 2 s, 4 s ...), so a recovery shows within seconds, as kube-aggregator's rate-limited requeue does
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # seconds this replica may still write (its Lease's renew deadline; unbounded without leader election)
    license: Callable[[], float] = lambda: math.inf
    # why the probes go without the probe identity's token, when they do (kube/identity.py)
    token_problem: Callable[[], str | None] = lambda: None

    def __post_init__(self) -> None:
        self.queue = ProbeQueue(lambda: asyncio.get_running_loop().time())
        # 16 at once wrote ~50 verdicts a second at start-up and in a mass hang (make bench, N = 1,000): each
        # write waits on kube-apiserver, not on us
        self._write_slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.pipeline = Pipeline(self.settings, self.inputs, self.probe, self.path, lambda: self.now(),
                                 self.silent, slots=asyncio.Semaphore(self.settings.concurrency),
                                 on_probe=self._probing, token_problem=lambda: self.token_problem(),
                                 clients=self.clients, consumers=self.consumers)
        self.cadence = Cadence(self.settings)
        self.sharing = EndpointSharing()
        self.written = Written()
        self.before_waiting = BeforeWaiting()
        self.sweep = Sweep()
        self.gate = WriteGate(self.settings.max_write_rate, self.settings.max_write_burst,
                              license=lambda: self.license())
        self._cheap: set[str] = set()  # failing cheaply (refused, an error status) or awaiting kube-apiserver
        self.backend_changes: dict[str, BackendChange] = {}  # each APIService's last change of backend
        self._again: set[str] = set()  # to be checked again as soon as the check running now ends

    # --- triggers -------------------------------------------------------------------------------
    def kube_changed(self, name: str) -> None:
        """kube-apiserver's own Available (or its message) on this APIService moved: it has news
        about the server (kube-aggregator re-checks a failing one from 5 ms on), so look again at
        once, and a failing one's backoff starts over. A check already running is not cancelled but
        followed at once by another: on a hung server kube-apiserver's message changes with each of
        its own 5 s checks, and cancelling ours at each kept it from ever ending in a verdict."""
        self.retry.kick(name)
        if name in self._inflight:
            self._again.add(name)
        else:
            self.changed_now([name])

    def answered_again(self, target: Target) -> None:
        """A silent endpoint answered the probe that kept asking it: news for every APIService behind it."""
        self.changed_now(self.sharing.users(target))

    async def backend_changed(self, name: str, uid: str | None, change: BackendChange) -> None:
        """The APIService now points elsewhere (core/backends): kept for explain, and told as an Event
        by the replica that leads (a standby sees the same change)."""
        self.backend_changes[name] = change
        log.info("backend changed name=%s %s", name, change.event.message)
        if self.record_event is not None and self.license() > 0:
            await self.record_event(name, uid, change.event)

    def changed_now(self, names: Iterable[str]) -> None:
        for name in names:
            self.queue.schedule(name, self.settings.debounce, urgent=True)

    def arrived(self, name: str, resource_version: str) -> None:
        """The watch brought this version of the APIService into the index."""
        self.written.arrived(name, resource_version)

    def forget(self, name: str) -> None:
        self.queue.forget(name)
        self.written.forget(name)
        self.before_waiting.forget(name)
        self.retry.forget(name)
        self._cheap.discard(name)
        self.backend_changes.pop(name, None)
        self._again.discard(name)
        self.cadence.forget(name)
        self.sharing.forget(name)
        self.pipeline.forget(name)
        self.metrics.forget(name)
        self._sweep_done(name)
        task = self._inflight.pop(name, None)
        if task is not None:
            task.cancel()

    def periodic_interval(self) -> float:
        return self.cadence.interval()

    def _next_periodic(self, name: str) -> None:
        interval = self.periodic_interval()
        self.metrics.probe_interval.set(interval)
        retry = self.retry.delay(name, self._retry_cap(name, interval))
        delay = retry if retry is not None else self.cadence.next_delay(name, interval)
        self.queue.schedule(name, delay, urgent=False)

    def _retry_cap(self, name: str, interval: float) -> float:
        if name not in self._cheap:
            return interval
        return cheap_retry_cap(len(self._cheap), self.settings.max_probe_rate, interval)

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
            if await self.check(name):
                self._sweep_done(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, WriteFailed | WriteForbidden):
                log.exception("check failed name=%s", name)
            self.retry.failed(name, getattr(exc, "retry_after", None))
            self._cheap.discard(name)
            delay = self.retry.delay(name, self.periodic_interval())
            self.queue.schedule(name, delay if delay is not None else 1.0, urgent=True)
        finally:
            if self._inflight.get(name) is me:
                del self._inflight[name]
                if self.inputs.apiservice(name) is not None:
                    if name in self._again:
                        self._again.discard(name)
                        self.changed_now([name])
                    else:
                        self._next_periodic(name)

    async def check(self, name: str) -> bool:
        """One check and its write; False when it could not run yet: the watches of the Service it
        references have not listed (it would judge a Service it has not read as missing)."""
        if not self.inputs.ready_for(name):
            self.queue.schedule(name, UNLISTED_RETRY, urgent=True)
            return False
        if self.inputs.apiservice(name) is not None:
            self.stats.checks += 1
        outcome = await self.pipeline.run(name, interval=self.periodic_interval(), remembered=self.written.previous)
        if outcome is None:
            self.forget(name)
            return True
        plan = outcome.gathered.resolution.plan
        self.cadence.probed(name, plan is not None)
        if plan is not None:
            evidence = outcome.evidence
            self.metrics.observe_probes(name, evidence.measured)
            # a sibling whose check is already running finishes it rather than start over, then looks
            # again: what it gathered may predate the news (a mass hang's last flips came at their
            # periodic turn, up to 14 s late, make bench)
            for sibling in self.sharing.record(name, evidence.measured):
                if sibling in self._inflight:
                    self._again.add(sibling)
                else:
                    self.queue.schedule(sibling, self.settings.debounce, urgent=False)
            self.metrics.observe_certificates(name, plan, evidence.probes)
            if evidence.asked is not None:
                self.metrics.observe_path(evidence.asked)
        await self._settle(outcome)
        return True

    def _probing(self) -> None:
        self.stats.probes += 1

    async def _settle(self, outcome: Outcome) -> None:
        name, new, previous = outcome.name, list(outcome.conditions), outcome.previous
        self.metrics.blocked_namespaces.labels(name=name).set(len(outcome.blocked))
        self.metrics.stalled_autoscalers.labels(name=name).set(len(outcome.stalled))
        self.metrics.observe_conditions(name, new[0])
        self.metrics.observe_clients(name, outcome.evidence.clients, new[0], new[1])
        self._cheap.discard(name)
        if new[0].status is Status.TRUE:
            self.retry.succeeded(name)
        elif new[0].reason == AWAITING:
            # the server answers; kube-apiserver is catching up (its proxy taking in its own verdict, its
            # discovery refreshing), within a second or two: the outage's grown backoff no longer applies.
            # Each of its steps starts over from the base: its proxy passing (False -> Unknown) means its
            # discovery follows within milliseconds, not after our second doubling
            prior = next((c for c in previous if c.type == new[0].type), None)
            if prior is None or prior.reason != AWAITING or prior.status != new[0].status:
                self.retry.succeeded(name)
            self.retry.failed(name, base=CHEAP_RETRY_BASE)
            self._cheap.add(name)
        else:
            base = retry_base(outcome.evidence.probes)
            self.retry.failed(name, base=base)
            if base is not None:
                self._cheap.add(name)
        if not changed(new, previous):
            return
        before = {c.type: c for c in previous}
        async with self._write_slots:
            try:
                made = await self.gate.send(lambda: self.write(name, new))
            except WriteDeferred:
                raise
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
        if made is None:
            self.forget(name)
            return
        self.stats.writes += 1
        self.metrics.status_writes.inc()
        self.written.remember(name, new, made)
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

        event = event_for_transition(self.before_waiting.against(name, before, new), new[0], new[1])
        if event is not None and self.record_event is not None:
            uid = (outcome.apiservice.get("metadata") or {}).get("uid")
            await self.record_event(name, uid, event)

    def _sweep_done(self, name: str) -> None:
        loop_now = asyncio.get_running_loop().time()
        ended = self.sweep.done(name, loop_now, self.inputs.apiservice_names)
        if ended is None:
            return
        self.metrics.apiservices.set(ended.next_size)
        if ended.took is not None:
            self.metrics.last_sweep.set(time.time())
            self.metrics.sweep_duration.set(ended.took)
            self.stats.last_sweep_done = loop_now

    def schedule_all(self) -> None:
        for name in self.inputs.apiservice_names():
            if name not in self.queue and name not in self._inflight:
                self.queue.schedule(name, self.settings.debounce, urgent=True)
