"""Which Kubernetes Event a change of our conditions is worth, if any. Pure: the recorder
(kube/events.py) files it."""

from __future__ import annotations

from dataclasses import dataclass

from apiservice_operator.core.blast import blocked_count
from apiservice_operator.core.consumers import stalled_count
from apiservice_operator.core.decide import AWAITING
from apiservice_operator.core.model import Condition, Status


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
    if degraded.reason == AWAITING and not available_moved:
        return None  # kube-apiserver's cache catching up on some instances: what follows says what happened
    if not (available_moved or degraded_moved):
        if available.status is Status.TRUE:
            return None
        before_message = prior_a.message if prior_a else ""
        # the outage now holds up more namespace deletions, or stalls more autoscalers: worth telling,
        # though nothing else moved
        for count, reason in ((blocked_count, "BlockingNamespaceDeletion"), (stalled_count, "StallingAutoscalers")):
            if count(available.message) > count(before_message):
                return EventSpec("Warning", reason, f"{available.type} is {available.status}: {available.message}")
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
