"""Detection latency: inject a fault, time until kube-apiserver's Available and ours flip; then
repair it and time the recovery. The four faults run side by side, each on its own APIService."""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.cluster.harness import AggregatedAPI

from bench.watcher import OURS, THEIRS, Watcher

BOUND = 300.0
SETTLE_MIN, SETTLE_MAX = 2.0, 12.0  # seconds: beyond this a flip is reported as "never", not as a number


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[AggregatedAPI], None]
    repair: Callable[[AggregatedAPI], None]


FAULTS = [
    Fault("EndpointSlice emptied", lambda a: a.write_slice([]), lambda a: a.write_slice()),
    Fault("server hangs (SIGSTOP)", lambda a: a.servers[0].signal(signal.SIGSTOP),
          lambda a: a.servers[0].signal(signal.SIGCONT)),
    Fault("server killed (refused)", lambda a: a.servers[0].stop(), lambda a: a.servers[0].start()),
    Fault("server answers 500", lambda a: a.set_state(mode="status", status=500),
          lambda a: a.set_state(mode="healthy")),
]


@dataclass
class Samples:
    """fault -> phase ('fault' | 'recovery') -> which -> [seconds or None]"""

    data: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: str, phase: str, which: str, value: float | None) -> None:
        with self.lock:
            self.data.setdefault(fault, {}).setdefault(phase, {}).setdefault(which, []).append(value)


def _one_fault(fault: Fault, api: AggregatedAPI, watcher: Watcher, reps: int, samples: Samples) -> None:
    rng = random.Random(fault.name)
    for _ in range(reps):
        for which in (OURS, THEIRS):  # start from healthy on both
            if watcher.current(api.name, which) != "True":
                watcher.wait(api.name, which, "True", 0, BOUND)
        # Settle, then strike at a random moment: a status write is an update event that makes
        # kube-aggregator re-check at once, so a fault injected right after one would land inside
        # that triggered check and flatter it (seen in a first run: a hang "detected" in 5.0 s).
        time.sleep(rng.uniform(SETTLE_MIN, SETTLE_MAX))
        t0 = time.monotonic()
        fault.inject(api)
        for which in (OURS, THEIRS):
            t = watcher.wait(api.name, which, "False", t0, BOUND)
            samples.add(fault.name, "fault", which, None if t is None else t - t0)
        t1 = time.monotonic()
        fault.repair(api)
        for which in (OURS, THEIRS):
            t = watcher.wait(api.name, which, "True", t1, BOUND)
            samples.add(fault.name, "recovery", which, None if t is None else t - t1)


def run(make_api: Callable[[str], AggregatedAPI], watcher: Watcher, reps: int) -> Samples:
    samples = Samples()
    apis = [(fault, make_api(f"lat{i}")) for i, fault in enumerate(FAULTS)]
    threads = [threading.Thread(target=_one_fault, args=(f, a, watcher, reps, samples)) for f, a in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def summarise(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(median, p90, how many never flipped within BOUND)."""
    done = sorted(v for v in values if v is not None)
    never = len(values) - len(done)
    if not done:
        return None, None, never
    p90 = done[min(len(done) - 1, max(0, round(0.9 * len(done)) - 1))]
    return statistics.median(done), p90, never
