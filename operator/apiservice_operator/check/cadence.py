"""When each APIService is next due for its periodic check, and the interval that keeps the
periodic probes within --max-probe-rate whatever the number of APIServices."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from apiservice_operator.core.settings import Settings


@dataclass
class Cadence:
    settings: Settings
    rand: Callable[[], float] = random.random
    _probed: set[str] = field(default_factory=set)  # whose last check probed: they set the pace
    _phased: set[str] = field(default_factory=set)  # given a random phase in the periodic schedule

    def probed(self, name: str, yes: bool) -> None:
        """Whether the APIService's last check probed (not Local, not failed before a probe)."""
        if yes:
            self._probed.add(name)
        else:
            self._probed.discard(name)

    def interval(self) -> float:
        """Few APIServices are re-probed more often (a hang shows sooner), many less often, so the
        periodic probes stay within --max-probe-rate whatever N is."""
        s = self.settings
        shortest = min(s.min_probe_interval, s.probe_interval)
        return min(s.probe_interval, max(shortest, len(self._probed) / s.max_probe_rate))

    def next_delay(self, name: str, interval: float) -> float:
        if name not in self._phased:
            # the first periodic probe at a random point of the interval: APIServices that arrive
            # together (start-up, a burst) would otherwise be probed in one burst every interval,
            # and their shared servers answer a burst slowly (measured: SlowDiscovery and timeouts
            # flapping at N=1000 where 100 probes/s spread evenly are easy)
            self._phased.add(name)
            return interval * self.rand()
        return interval * (1 - 0.1 * self.rand())

    def forget(self, name: str) -> None:
        self._probed.discard(name)
        self._phased.discard(name)
