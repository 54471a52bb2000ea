"""A server's pace, judged on two answers in a row (the controller's latency memory)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from apiservice_operator.core.model import ProbeResult, Target


@dataclass
class Pacing:
    """A passing probe's latency is taken as the smaller of this answer's and the previous one's from
    that endpoint. A one-off spike (kube-apiserver's own resync of 1,000 APIServices hitting the same
    servers every 30 s, make bench) then neither moves the message's bucket nor raises SlowDiscovery,
    each a status write; a slow pace shows at its second answer. Metrics see every answer as it was."""

    _last: dict[str, dict[Target, float]] = field(default_factory=dict)  # each endpoint's last passing answer

    def paced(self, name: str, probes: Sequence[ProbeResult]) -> list[ProbeResult]:
        last = self._last.get(name, {})
        self._last[name] = {p.target: p.latency for p in probes if p.ok}
        return [replace(p, latency=min(p.latency, last[p.target])) if p.ok and p.target in last else p
                for p in probes]

    def forget(self, name: str) -> None:
        self._last.pop(name, None)
