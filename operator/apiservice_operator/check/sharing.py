"""Which APIServices share an endpoint, and whether it answered when last probed: what one
APIService's probe learns about a shared server is news for every APIService behind it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from apiservice_operator.core.model import ErrorKind, ProbeResult, Target

# how a probe can fail when nothing at the address answers: news for every APIService behind it.
# Not TLS (each APIService brings its own caBundle) nor an HTTP status (each asks its own path).
SILENT_OR_GONE = frozenset({ErrorKind.TIMEOUT, ErrorKind.REFUSED, ErrorKind.CONNECTION})


@dataclass
class EndpointSharing:
    _users: dict[Target, set[str]] = field(default_factory=dict)
    _targets_of: dict[str, frozenset[Target]] = field(default_factory=dict)
    _answering: dict[Target, bool] = field(default_factory=dict)

    def record(self, name: str, probes: Sequence[ProbeResult]) -> set[str]:
        """Takes one APIService's probe results; returns the other APIServices to check now, not at
        their turn in the interval: those behind an endpoint that stopped answering or answers again
        (make bench: 1,000 behind one hung server). Only a change is news, so a server that stays
        down costs nothing more."""
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
        siblings: set[str] = set()
        for probe in probes:
            answering = probe.error not in SILENT_OR_GONE
            known = self._answering.get(probe.target)
            self._answering[probe.target] = answering
            if known is not None and known != answering:
                siblings |= self._users[probe.target] - {name}
        return siblings

    def forget(self, name: str) -> None:
        self.record(name, [])

    def users(self, target: Target) -> frozenset[str]:
        return frozenset(self._users.get(target, ()))
