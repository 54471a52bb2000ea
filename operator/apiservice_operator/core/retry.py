"""One retry policy for everything that fails and must be tried again: checks that did not end in
Available=True and status writes that did not land. Exponential from `base`, capped, with jitter,
and able to take a hint (a 429's Retry-After) and a kick (something says: look again now).

kube-aggregator re-queues a failed check with client-go's exponential failure rate limiter (5 ms to
30 s, remote_available_controller.go): fast after short outages, gentle during long ones. Ours
starts at 1 s (a probe costs a round trip to the server, not a map lookup) and is capped by the
caller, usually the periodic interval, so that a failing APIService is never re-checked less often
than a healthy one; a cheap failure (refused, an error status) starts at 0.1 s and is capped at 0.25 s
while few fail (below). Pure: the random source is injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from apiservice_operator.core.model import ErrorKind, ProbeResult

DEFAULT_BASE = 1.0  # seconds
DEFAULT_JITTER = 0.1  # up to this fraction taken off at random: retries of a burst of failures spread out
MAX_HINT = 300.0  # seconds: a Retry-After beyond this is a server's mistake, not a plan


@dataclass
class RetryPolicy:
    base: float = DEFAULT_BASE
    jitter: float = DEFAULT_JITTER
    rand: Callable[[], float] = random.random
    _failures: dict[Hashable, int] = field(default_factory=dict)
    _hints: dict[Hashable, float] = field(default_factory=dict)
    _bases: dict[Hashable, float] = field(default_factory=dict)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def failed(self, key: Hashable, hint: float | None = None, base: float | None = None) -> None:
        """One more failure in a row; `hint` is the least wait the other side asked for; `base` the
        first wait for this key where it differs from the policy's (a cheap failure retries sooner)."""
        self._failures[key] = self._failures.get(key, 0) + 1
        if base is not None:
            self._bases[key] = base
        else:
            self._bases.pop(key, None)
        if hint is not None and hint > 0:
            self._hints[key] = min(hint, MAX_HINT)
        else:
            self._hints.pop(key, None)

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)
        self._hints.pop(key, None)
        self._bases.pop(key, None)

    forget = succeeded

    def kick(self, key: Hashable) -> None:
        """Something says the cause may be gone (a change seen): the next wait starts from `base`
        again, and an old hint no longer holds; the failure still counts as one."""
        if key in self._failures:
            self._failures[key] = 1
        self._hints.pop(key, None)

    def delay(self, key: Hashable, cap: float) -> float | None:
        """Seconds until the next try, or None when the key is not failing (the caller's own pace
        applies). Never below a hint, even where the hint exceeds `cap`."""
        failures = self._failures.get(key, 0)
        if not failures:
            return None
        base = self._bases.get(key, self.base)
        wait = min(cap, base * 2.0 ** min(failures - 1, 32)) * (1 - self.jitter * self.rand())
        return max(wait, self._hints.get(key, 0.0))


# failures that cost the server nothing to answer again (a refused connection, an error status):
# retried from CHEAP_RETRY_BASE, as kube-aggregator retries every failure from 5 ms; a timeout or a
# TLS failure holds a connection or a handshake, and keeps the policy's 1 s
CHEAP_FAILURES = frozenset({ErrorKind.REFUSED, ErrorKind.HTTP_STATUS})
CHEAP_RETRY_BASE = 0.1
# ... and capped here rather than at the interval: after a 10 s outage a backoff grown to the interval
# (4 s) held the recovery back by 2-4 s, and at 0.5 s by 0.25 s on average, where kube-apiserver's
# unaided check, its backoff just begun, saw it within 0.05 s (make bench); 4 refusals a second cost
# nothing. Our AwaitingKubeAPIServer write is what makes kube-apiserver re-check at once.
CHEAP_RETRY_CAP = 0.25


def retry_base(probes: Sequence[ProbeResult]) -> float | None:
    failed = [p.error for p in probes if not p.ok]
    return CHEAP_RETRY_BASE if failed and all(e in CHEAP_FAILURES for e in failed) else None


def cheap_retry_cap(failing: int, max_rate: float, interval: float) -> float:
    """How long a cheaply failing APIService may wait at most: CHEAP_RETRY_CAP while few fail, longer
    as more do, so that their retries together stay within --max-probe-rate (a shared server down
    behind 1,000 APIServices is no storm), and never longer than the periodic interval."""
    return min(interval, max(CHEAP_RETRY_CAP, failing / max_rate))
