"""Detection latency without interference: inject a fault, time until each controller's verdict
flips; then repair it and time the recovery.

kube-aggregator re-checks an APIService on every update of it, and our status write is one: timed
on an APIService we write, its detection is ours plus its own check (DESIGN 6b). So every fault
acts on one server (or one Service, or one path) behind two APIServices, created together, alike
but for their group and one label:
- the handled one, which the operator judges (ours is timed here);
- its twin, labelled `bench-twin=true`, which the operator is started without (`--selector
  '!bench-twin'`: it is not in its indexes, it is never probed, nothing of ours is ever written to
  it), so kube-apiserver's Available on the twin changes only when kube-apiserver itself notices.
kube-apiserver's Available on the handled object is kept too, as the old method measured it
("aided": its re-check triggered by our write), for comparison only.

The faults on the endpoints run on the single-instance plane; the faults of the user's path (one
kube-apiserver instance, or every one, cut from the server with iptables) on a plane of two
kube-apiservers (tests/cluster/multiplane.py), each lane on its own server, all lanes at once but the
hung server's, which runs after the others (ALONE).
"""

from __future__ import annotations

import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.cluster import pki
from tests.cluster.harness import SERVER_PORT, AggregatedAPI, ServerProcess, next_address
from tests.cluster.kube import Kube
from tests.cluster.multiplane import Cut, MultiControlPlane

from bench.watcher import OURS, OURS_DEGRADED, THEIRS, Watcher

BOUND = 120.0  # seconds: beyond this a flip is reported as "never"; kube-apiserver resyncs every 30 s
SETTLE_MIN, SETTLE_MAX = 2.0, 12.0
TWIN_LABEL = "bench-twin"
OPERATOR_SELECTOR = f"!{TWIN_LABEL}"

# which: the three verdicts timed for each fault
US, TWIN, AIDED = "ours", "kube-apiserver unaided (twin)", "kube-apiserver on our object (aided, old method)"
WHICH = (US, TWIN, AIDED)
# what a user gets: GET /apis/<twin group>/<version> through kube-apiserver answering 200 again after
# the repair. kube-apiserver's Available can turn True while its proxy still answers 503: one worker
# takes in every APIService's verdict, and it waits on a hung server's OpenAPI document meanwhile
USERS = "users through kube-apiserver (twin)"
USERS_HANDLED = "users through kube-apiserver (handled)"  # the same, for the group the operator judges
POLL = 0.02  # seconds between the user's requests


class TwinAPI(AggregatedAPI):
    """An AggregatedAPI whose servers answer any group (bench/multigroup.py), registered twice: the
    handled APIService and its twin, same Service, same servers."""

    @property
    def twin_group(self) -> str:
        head, _, rest = self.group.partition(".")
        return f"{head}-twin.{rest}"

    @property
    def twin(self) -> str:
        return f"{self.version}.{self.twin_group}"

    def start_multigroup_servers(self, count: int) -> None:
        dns = f"{self.service}.{self.namespace}.svc"
        cert, key = pki.issue(self.ca, dns, dns_names=(dns,), server=True).write(
            self.workdir, f"{self.namespace}-{self.service}-serving")
        for _ in range(count):
            address = next_address()
            proc = ServerProcess(address, SERVER_PORT, self.workdir, [])
            proc.argv = [sys.executable, "-m", "bench.multigroup", "--address", address, "--port", str(SERVER_PORT),
                         "--cert", str(cert), "--key", str(key), "--state", str(proc.state_file)]
            proc.start()
            self.servers.append(proc)

    def register_both(self) -> None:
        self.register_apiservice()
        handled_group = self.group
        try:
            self.group = self.twin_group
            self.register_apiservice(labels={TWIN_LABEL: "true"})
        finally:
            self.group = handled_group

    def remove(self) -> None:
        super().remove()
        self.kube.delete(Kube.apiservice_path(self.twin))


@dataclass
class Lane:
    """One fault's APIService pair, and what the fault left to undo."""

    api: TwinAPI
    cut: Cut | None = None


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Lane], None]
    repair: Callable[[Lane], None]
    ours: tuple[str, str, str] = (OURS, "False", "True")  # (condition type, when detected, when healthy)
    # one instance of two cut: kube-apiserver's own condition flips as the instances overwrite each
    # other (kubernetes/kubernetes#111890), so a change back to True is no recovery
    theirs_recovers: bool = True
    physical: str = "budget + interval"
    # seconds from the strike to the repair, at least (0: repaired once every verdict has flipped):
    # after a long outage kube-apiserver's backoff (5 ms doubling to 30 s) and its discovery retry
    # (0.5 s doubling to a minute) have grown, and recovery is measured at their pace
    outage: float = 0.0


def _stop(lane: Lane) -> None:
    lane.api.servers[0].stop()


def _start(lane: Lane) -> None:
    lane.api.servers[0].start()


ENDPOINT_FAULTS = [
    Fault("EndpointSlice emptied", lambda a: a.api.write_slice([]), lambda a: a.api.write_slice(), physical="event"),
    Fault("server hangs (SIGSTOP)", lambda a: a.api.servers[0].signal(signal.SIGSTOP),
          lambda a: a.api.servers[0].signal(signal.SIGCONT)),
    Fault("server killed (refused)", _stop, _start, physical="interval"),
    Fault("server answers 500", lambda a: a.api.set_state(mode="status", status=500),
          lambda a: a.api.set_state(mode="healthy"), physical="interval"),
    # recovery after outages of a set length (issue 26): short, and long enough for every backoff to grow
    Fault("server killed for 10 s (recovery)", _stop, _start, physical="interval", outage=10.0),
    Fault("server killed for 3 min (recovery)", _stop, _start, physical="interval", outage=180.0),
]
# run after the others, not beside them: while a server hangs, kube-apiserver's APIService registration
# worker waits on its OpenAPI download (kube-aggregator's AddAPIService -> UpdateAPIServiceSpec, under the
# OpenAPI aggregator's lock), and no other APIService's proxy takes in a new verdict meanwhile: beside it,
# every other lane's recovery measured that stall (2026-12-07-recovery-r3-users.md), not its own fault
ALONE = ("server hangs (SIGSTOP)",)
RECOVERY_FAULTS = ("server answers 500", "server killed (refused)", "server killed for 10 s (recovery)",
                   "server killed for 3 min (recovery)")


def path_faults(plane: MultiControlPlane) -> list[Fault]:
    def cut(which: int | str) -> Callable[[Lane], None]:
        def inject(lane: Lane) -> None:
            server = lane.api.servers[0]
            lane.cut = plane.cut(which, server.address, server.port)  # type: ignore[arg-type]
        return inject

    def restore(lane: Lane) -> None:
        if lane.cut is not None:
            lane.cut.restore()
            lane.cut = None

    return [
        Fault("every kube-apiserver instance cut from the server (path)", cut("all"), restore,
              physical="budget + interval + /livez"),
        Fault("one of two instances cut from the server (path)", cut(1), restore,
              ours=(OURS_DEGRADED, "True", "False"), theirs_recovers=False, physical="budget + interval + /livez"),
    ]


@dataclass
class Samples:
    """fault -> phase ('fault' | 'recovery') -> which -> [seconds or None]"""

    data: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. the operator's interval on each plane
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: str, phase: str, which: str, value: float | None) -> None:
        with self.lock:
            self.data.setdefault(fault, {}).setdefault(phase, {}).setdefault(which, []).append(value)

    def median(self, fault: str, which: str, phase: str = "fault") -> float | None:
        return summarise(self.data.get(fault, {}).get(phase, {}).get(which, []))[0]


def _targets(fault: Fault, lane: Lane) -> dict[str, tuple[str, str, str, str]]:
    """which -> (APIService, condition type, status when detected, status when healthy)"""
    ctype, bad, good = fault.ours
    return {US: (lane.api.name, ctype, bad, good), TWIN: (lane.api.twin, THEIRS, "False", "True"),
            AIDED: (lane.api.name, THEIRS, "False", "True")}


def one_fault(fault: Fault, lane: Lane, watcher: Watcher, reps: int, samples: Samples) -> None:
    rng = random.Random(fault.name)
    targets = _targets(fault, lane)
    for _ in range(reps):
        for name, ctype, _, good in targets.values():  # start from healthy everywhere
            if watcher.current(name, ctype) != good:
                watcher.wait(name, ctype, good, 0, BOUND)
        # Strike at a random moment: right after a status write kube-aggregator re-checks at once,
        # and a fault landing inside that check would flatter it; kube-apiserver's 30 s resync has a
        # phase of its own, which a random moment samples evenly over many repetitions.
        time.sleep(rng.uniform(SETTLE_MIN, SETTLE_MAX))
        t0 = time.monotonic()
        fault.inject(lane)
        for which, (name, ctype, bad, _) in targets.items():
            t = watcher.wait(name, ctype, bad, t0, BOUND)
            samples.add(fault.name, "fault", which, None if t is None else t - t0)
        time.sleep(max(0.0, t0 + fault.outage - time.monotonic()))
        t1 = time.monotonic()
        fault.repair(lane)
        users = []
        if fault.theirs_recovers:
            for group, which in ((lane.api.twin_group, USERS), (lane.api.group, USERS_HANDLED)):
                users.append(threading.Thread(target=_user_recovers, args=(fault, lane, group, which, t1, samples),
                                              daemon=True))
                users[-1].start()
        for which, (name, ctype, bad, good) in targets.items():
            if which != US and not fault.theirs_recovers:
                continue
            if watcher.current(name, ctype) == good and watcher.wait(name, ctype, bad, t0, 0) is None:
                continue  # it never flipped: there is nothing to recover from
            t = watcher.wait(name, ctype, good, t1, BOUND)
            samples.add(fault.name, "recovery", which, None if t is None else t - t1)
        for user in users:
            user.join()


def _user_recovers(fault: Fault, lane: Lane, group: str, which: str, t1: float, samples: Samples) -> None:
    """Seconds from the repair until a user's discovery request for `group` passes through
    kube-apiserver (None: not within BOUND)."""
    path = f"/apis/{group}/{lane.api.version}"
    while time.monotonic() - t1 < BOUND:
        try:
            if lane.api.kube.http.get(path, timeout=5).status_code == 200:
                samples.add(fault.name, "recovery", which, time.monotonic() - t1)
                return
        except Exception:  # a timeout or reset is a failed request, as a user sees it
            pass
        time.sleep(POLL)
    samples.add(fault.name, "recovery", which, None)


def start_lanes(faults: list[Fault], make_api: Callable[[str], TwinAPI], watcher: Watcher, reps: int,
                samples: Samples, prefix: str) -> list[threading.Thread]:
    threads = []
    for i, fault in enumerate(faults):
        samples.faults[fault.name] = fault
        lane = Lane(make_api(f"{prefix}{i}"))
        thread = threading.Thread(target=one_fault, args=(fault, lane, watcher, reps, samples),
                                  name=f"lane:{fault.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def summarise(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(median, p90, how many never flipped within BOUND)."""
    done = sorted(v for v in values if v is not None)
    never = len(values) - len(done)
    if not done:
        return None, None, never
    p90 = done[min(len(done) - 1, max(0, round(0.9 * len(done)) - 1))]
    return statistics.median(done), p90, never
