"""The controller's short memories: what it wrote last (until the watch brings it back), the verdict
that stood before a wait for kube-apiserver, and how far the current sweep over every APIService has got."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from apiservice_operator.core.decide import AWAITING
from apiservice_operator.core.model import Condition, Obj

# seconds within which the watch brings our own write back: a memory older than this gives way to the index
WATCH_LAG = 30.0


@dataclass(frozen=True)
class _Write:
    conditions: tuple[Condition, ...]
    resource_version: str  # of the object our write made
    at: float


@dataclass
class Written:
    """What we wrote last, until the watch brings that write back (its resourceVersion): before it does,
    the index shows an older object and must not cause a second identical write. Older is not only the
    object we read: kube-apiserver's own status update of the same APIService can land just before ours
    and reach the index first (a mass flip at N = 1,000 wrote 210 times for 200 transitions, make
    bench), so "the object we read when we wrote" was too narrow a test."""

    clock: Callable[[], float] = time.monotonic
    _last: dict[str, _Write] = field(default_factory=dict)

    def remember(self, name: str, conditions: Sequence[Condition], resource_version: str) -> None:
        self._last[name] = _Write(tuple(conditions), resource_version, self.clock())

    def arrived(self, name: str, resource_version: str) -> None:
        """The watch brought this version of the APIService into the index: once it is our write's,
        the index holds what we wrote (or newer, someone's since) and the memory is done."""
        last = self._last.get(name)
        if last is not None and last.resource_version == resource_version:
            del self._last[name]

    def previous(self, name: str, apiservice: Obj) -> list[Condition] | None:
        """Our last write while the index has not shown it yet; None otherwise."""
        last = self._last.get(name)
        if last is None:
            return None
        if last.resource_version in ("", _resource_version(apiservice)) or self.clock() - last.at > WATCH_LAG:
            # the index holds it, or we cannot tell, or the watch never brought it back (a relist skips
            # versions): what the index shows stands, and a write someone made since is not ignored
            del self._last[name]
            return None
        return list(last.conditions)

    def forget(self, name: str) -> None:
        self._last.pop(name, None)


@dataclass
class BeforeWaiting:
    """Per condition, our last one that was not AwaitingKubeAPIServer. A wait lasts a check or a few
    (a repaired server until kube-apiserver's own check passes again, its discovery catching up), and
    what follows it is news against what stood before it: FailedDiscoveryCheck, a wait, then Passed
    is a recovery (its Event was lost when the wait counted as no verdict at all). Memory only: after
    a restart a wait in the status is no verdict, and what follows it is the first."""

    _kept: dict[str, dict[str, Condition]] = field(default_factory=dict)

    def against(self, name: str, before: dict[str, Condition], new: Sequence[Condition]) -> dict[str, Condition]:
        """What the change to `new` is told against: `before`, each wait in it replaced by what
        stood before that wait."""
        kept = self._kept.setdefault(name, {})
        told = {t: kept.get(t, c) if c.reason == AWAITING else c for t, c in before.items()}
        kept.update({c.type: c for c in new if c.reason != AWAITING})
        return told

    def forget(self, name: str) -> None:
        self._kept.pop(name, None)


def _resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


@dataclass
class Sweep:
    """A sweep is complete when every handled APIService has been checked once since it began."""

    _pending: set[str] = field(default_factory=set)
    _started: float | None = None

    def done(self, name: str, now: float, names: Callable[[], Iterable[str]]) -> SweepEnd | None:
        """`name` was checked (or is gone). When that completes a sweep, a new one begins over
        `names()` (asked only then: it lists every APIService), and what ended is returned."""
        self._pending.discard(name)
        if self._pending:
            return None
        took = None if self._started is None else now - self._started
        self._pending = set(names())
        self._started = now if self._pending else None
        return SweepEnd(took, len(self._pending))


@dataclass(frozen=True)
class SweepEnd:
    took: float | None  # seconds the sweep took; None for the first, which began before anything was known
    next_size: int  # APIServices in the sweep that begins now
