"""One Kubernetes Event per transition, aggregated as client-go's EventCorrelator does: the same
(object, type, reason) within the window bumps `count` on the existing Event instead of adding
another, so a flapping server cannot flood the namespace."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.core.blast import blocked_count
from apiservice_operator.core.decide import AWAITING
from apiservice_operator.core.model import Condition, Status
from apiservice_operator.kube.client import GROUP, VERSION, Credentials

log = logging.getLogger(__name__)
AGGREGATION_WINDOW = 600.0  # client-go's default: 10 minutes
COMPONENT = "apiservice-operator"


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


def event_for_transition(before: dict[str, Condition], available: Condition, degraded: Condition) -> EventSpec | None:
    """What to say about a check that changed our conditions; None when nothing worth an event did."""
    if available.reason == AWAITING:
        return None  # lasts one check: the verdict after it says what happened
    prior_a, prior_d = before.get(available.type), before.get(degraded.type)
    if prior_a is not None and prior_a.status is Status.UNKNOWN and prior_a.reason == AWAITING:
        prior_a = prior_d = None  # no verdict before it: this is the first
    available_moved = prior_a is None or (prior_a.status, prior_a.reason) != (available.status, available.reason)
    degraded_moved = prior_d is None or prior_d.status != degraded.status
    if not (available_moved or degraded_moved):
        blocking = blocked_count(available.message)
        if available.status is not Status.TRUE and blocking > blocked_count(prior_a.message if prior_a else ""):
            # the outage now holds up more namespace deletions: worth telling, though nothing else moved
            return EventSpec("Warning", "BlockingNamespaceDeletion",
                             f"{available.type} is {available.status}: {available.message}")
        return None
    if available.status is not Status.TRUE:
        return EventSpec("Warning", available.reason, f"{available.type} is {available.status}: {available.message}")
    if degraded.status is Status.TRUE:
        return EventSpec("Warning", degraded.reason, f"{degraded.type} is True: {degraded.message}")
    was_bad = prior_a is not None and (prior_a.status is not Status.TRUE or
                                       (prior_d is not None and prior_d.status is Status.TRUE))
    if was_bad:
        return EventSpec("Normal", "Recovered", f"{available.type} is True again: {available.message}")
    # a first verdict that all is well is no news: the condition says it, and an operator (re)started
    # beside 1,000 APIServices would post 1,000 Events saying nothing happened
    return None


def _rfc3339(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).replace(microsecond=0)


class EventRecorder:
    def __init__(self, credentials: Credentials, namespace: str, host: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.namespace = namespace
        self.host = host
        self.clock = clock
        # (apiservice, type, reason) -> (event name, count, first seen)
        self._recent: dict[tuple[str, str, str], tuple[str, int, float]] = {}
        self._expired_at = 0.0

    async def record(self, name: str, uid: str | None, spec: EventSpec) -> None:
        if self.credentials.api is None:
            return
        api = client.CoreV1Api(self.credentials.api)
        now = self.clock()
        key = (name, spec.type, spec.reason)
        recent = self._recent.get(key)
        try:
            if recent is not None and now - recent[2] < AGGREGATION_WINDOW:
                event_name, count, first = recent
                await api.patch_namespaced_event(event_name, self.namespace, {
                    "count": count + 1, "lastTimestamp": _rfc3339(now).isoformat(), "message": spec.message})
                self._recent[key] = (event_name, count + 1, first)
                return
            event_name = f"{name}.{time.time_ns():x}"
            body = client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=event_name, namespace=self.namespace),
                involved_object=client.V1ObjectReference(
                    api_version=f"{GROUP}/{VERSION}", kind="APIService", name=name, uid=uid),
                reason=spec.reason, message=spec.message[:1024], type=spec.type,
                first_timestamp=_rfc3339(now), last_timestamp=_rfc3339(now), count=1,
                source=client.V1EventSource(component=COMPONENT, host=self.host),
                reporting_component=COMPONENT, reporting_instance=self.host,
            )
            await api.create_namespaced_event(self.namespace, body)
            self._recent[key] = (event_name, 1, now)
            self._expire(now)
        except ApiException as exc:
            # an event is best effort: never let it block or break the status write
            if recent is not None and exc.status == 404:
                self._recent.pop(key, None)
            log.warning("event not recorded name=%s reason=%s status=%s", name, spec.reason, exc.status)

    def _expire(self, now: float) -> None:
        # at most once a minute: a scan per new Event made thousands of transitions quadratic
        if now - self._expired_at < 60:
            return
        self._expired_at = now
        for key in [k for k, v in self._recent.items() if now - v[2] >= AGGREGATION_WINDOW]:
            del self._recent[key]
