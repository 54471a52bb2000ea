"""How the verdicts word what they found: latency buckets with hysteresis, and lists of
endpoints and instances capped for a condition's message. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

from apiservice_operator.core.model import (
    Condition,
    ProbeResult,
)

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
SLOW_EXIT_FACTOR = 0.8
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


def previous_bucket(previous: Condition | None) -> str | None:
    found = _BUCKET_IN_MESSAGE.search(previous.message) if previous is not None else None
    return found.group(1) if found else None


def listed(entries: Sequence[tuple[str, str]]) -> str:
    """(endpoint, words) pairs, by endpoint, at most MAX_ENDPOINTS_IN_MESSAGE of them."""
    shown = [words for _, words in sorted(entries)[:MAX_ENDPOINTS_IN_MESSAGE]]
    more = len(entries) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def list_failures(failures: Sequence[ProbeResult]) -> str:
    return listed([(f.target.endpoint, f.describe()) for f in failures])


