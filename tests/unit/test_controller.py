"""The probe loop's guarantees, with plain-data inputs, a scripted probe and fake loop time."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from apiservice_operator.check.controller import Controller, utc_now
from apiservice_operator.check.schedule import ProbeQueue
from apiservice_operator.core.clientview import ClientView, Freshness, InstanceView
from apiservice_operator.core.model import (
    Condition,
    ErrorKind,
    Obj,
    ProbePlan,
    ProbeResult,
    Status,
    Target,
    WriteFailed,
)
from apiservice_operator.core.retry import CHEAP_RETRY_CAP, RetryPolicy
from apiservice_operator.core.settings import Settings
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker
from tests import builders

pytestmark = pytest.mark.looptime


@dataclass
class World:
    """What the watches would know; mutated by the tests like the API would be."""

    apiservices: dict[str, Obj] = field(default_factory=dict)
    services: dict[tuple[str, str], Obj] = field(default_factory=dict)
    slices_: dict[tuple[str, str], list[Obj]] = field(default_factory=dict)

    def apiservice(self, name: str) -> Obj | None:
        return self.apiservices.get(name)

    def service(self, namespace: str, name: str) -> Obj | None:
        return self.services.get((namespace, name))

    def slices(self, namespace: str, name: str) -> list[Obj]:
        return self.slices_.get((namespace, name), [])

    def apiservice_names(self) -> Iterable[str]:
        return list(self.apiservices)

    def blocked_namespaces(self, group_version: str) -> list[str]:
        return []

    def ready_for(self, name: str) -> bool:
        return True

    def add(self, group: str, *, ready: bool = True, address: str = "10.0.0.1") -> str:
        obj = builders.make_apiservice(group, service_namespace="ns", service_name=group, ca_bundle=None,
                                       insecure_skip_tls_verify=True)
        obj["metadata"]["resourceVersion"] = "1"
        self.apiservices[obj["metadata"]["name"]] = obj
        self.services[("ns", group)] = builders.make_service("ns", group)
        self.slices_[("ns", group)] = [builders.make_slice("ns", group, [builders.make_endpoint(address, ready=ready)])]
        return str(obj["metadata"]["name"])


@dataclass
class Recorder:
    world: World
    writes: list[tuple[str, tuple[Condition, ...], float]] = field(default_factory=list)

    async def write(self, name: str, conditions: Sequence[Condition]) -> str:
        self.writes.append((name, tuple(conditions), asyncio.get_running_loop().time()))
        # the API would now hold them; the watch brings them back into the index
        obj = self.world.apiservices[name]
        obj.setdefault("status", {})["conditions"] = [c.to_api() for c in conditions]
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return str(obj["metadata"]["resourceVersion"])

    def last(self, name: str) -> dict[str, Any]:
        conds = [w[1] for w in self.writes if w[0] == name][-1]
        return {c.type.split("/")[-1]: (str(c.status), c.reason) for c in conds}


def healthy(plan: ProbePlan) -> list[ProbeResult]:
    return [ProbeResult(t, True, 0.01) for t in plan.targets]


async def healthy_async(plan: ProbePlan) -> list[ProbeResult]:
    return healthy(plan)


async def run_for(controller: Controller, seconds: float) -> None:
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_decision_needing_no_probe_is_not_delayed_by_hung_probes() -> None:
    world = World()
    hung = [world.add(f"hung{i}.example.com", address=f"10.0.0.{i + 10}") for i in range(5)]
    victim = world.add("victim.example.com")

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if plan.server_name.startswith("hung"):
            await asyncio.sleep(5)  # the whole budget, every time
        return healthy(plan)

    recorder = Recorder(world)
    # one probe slot: kube-aggregator's weak spot would be ours if resolution waited for it
    controller = Controller(Settings(concurrency=1), world, probe, recorder.write)
    controller.changed_now([*hung, victim])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(1)
    world.slices_[("ns", "victim.example.com")] = []  # the endpoints vanish
    emptied_at = asyncio.get_running_loop().time()
    controller.changed_now([victim])
    await asyncio.sleep(1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    flips = [t for name, conds, t in recorder.writes
             if name == victim and any(c.reason == "EndpointsNotFound" for c in conds)]
    assert flips, recorder.writes
    assert flips[0] - emptied_at < 0.5


async def test_change_during_a_hung_probe_cancels_it_and_decides_at_once() -> None:
    world = World()
    name = world.add("one.example.com")

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        await asyncio.sleep(5)
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(), world, probe, recorder.write)
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(1)  # probe in flight
    world.slices_[("ns", "one.example.com")][0]["endpoints"][0]["conditions"]["ready"] = False
    controller.changed_now([name])
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.last(name)["Available"] == ("False", "MissingEndpoints")


async def test_unchanged_verdict_is_written_once() -> None:
    world = World()
    name = world.add("steady.example.com")
    recorder = Recorder(world)

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return healthy(plan)

    controller = Controller(Settings(probe_interval=10), world, probe, recorder.write)
    controller.changed_now([name])
    await run_for(controller, 65)
    assert controller.stats.probes >= 6  # re-probed every ~10 s
    assert [w[0] for w in recorder.writes] == [name]
    assert recorder.last(name)["Available"] == ("True", "Passed")


async def test_periodic_reprobe_catches_a_server_that_starts_failing() -> None:
    world = World()
    name = world.add("flaky.example.com")
    broken = {"now": False}

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if broken["now"]:
            return [ProbeResult(t, False, 0.01, None, "connection refused") for t in plan.targets]
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=10), world, probe, recorder.write)
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(3)
    broken["now"] = True  # nothing in the API changes: only probing can notice
    await asyncio.sleep(11)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_deleted_apiservice_is_forgotten() -> None:
    world = World()
    name = world.add("gone.example.com")
    recorder = Recorder(world)
    controller = Controller(Settings(), world, lambda plan: asyncio.sleep(0, healthy(plan)), recorder.write)
    controller.changed_now([name])
    await run_for(controller, 1)
    del world.apiservices[name]
    controller.forget(name)
    await run_for(controller, 30)
    assert name not in controller.queue
    assert len(recorder.writes) == 1


async def test_queue_holds_each_name_once_at_its_earliest_time() -> None:
    loop = asyncio.get_running_loop()
    queue = ProbeQueue(loop.time)
    queue.schedule("a", 10, urgent=False)
    queue.schedule("a", 1, urgent=False)
    queue.schedule("a", 5, urgent=True)
    queue.schedule("b", 2, urgent=False)
    assert len(queue) == 2
    start = loop.time()
    assert await queue.take() == [("a", True)]
    assert loop.time() - start == pytest.approx(1, abs=0.01)
    assert await queue.take() == [("b", False)]
    assert len(queue) == 0


async def test_queue_take_honours_a_cancel_that_meets_a_change() -> None:
    """A watch event and the stop of the probe loop in one loop iteration: the cancel must win, or
    SIGTERM (or a lost Lease) leaves the loop probing and writing. wait_for on 3.11 lost it."""
    loop = asyncio.get_running_loop()
    queue = ProbeQueue(loop.time)
    queue.schedule("later", 60, urgent=False)
    taker = asyncio.create_task(queue.take())
    await asyncio.sleep(0)
    queue.schedule("sooner", 30, urgent=True)
    taker.cancel()
    await asyncio.wait([taker], timeout=1)
    assert taker.cancelled()


async def test_failing_apiservice_is_rechecked_sooner_so_recovery_shows_within_seconds() -> None:
    world = World()
    name = world.add("recovering.example.com")
    state = {"broken": True}

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if state["broken"]:
            return [ProbeResult(t, False, 0.01, None, "connection refused") for t in plan.targets]
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=10, min_probe_interval=10), world, probe, recorder.write)
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(30)  # failing all along: backoff 1, 2, 4, 8, then the interval
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")
    probes_while_failing = controller.stats.probes
    assert 6 <= probes_while_failing <= 8, probes_while_failing
    state["broken"] = False
    repaired = asyncio.get_running_loop().time()
    await asyncio.sleep(11)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    recovered = [t for n, conds, t in recorder.writes if n == name and conds[0].reason == "Passed"]
    assert recovered and recovered[0] - repaired <= 10.5


async def test_a_refusing_server_is_asked_again_within_half_a_second_however_long_it_was_down() -> None:
    """A refused connection costs the server nothing: its retries stop growing at CHEAP_RETRY_CAP, so
    a recovery after any outage shows within half a second, as kube-apiserver's unaided check sees it."""
    world = World()
    name = world.add("refusing.example.com")
    state = {"broken": True}
    asked: list[float] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        asked.append(asyncio.get_running_loop().time())
        if state["broken"]:
            return [ProbeResult(t, False, 0.01, ErrorKind.REFUSED, "connection refused") for t in plan.targets]
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=10, min_probe_interval=10), world, probe, recorder.write)
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(60)
    gaps = [b - a for a, b in itertools.pairwise(asked) if b > 10]
    assert gaps and max(gaps) <= CHEAP_RETRY_CAP + 0.01, max(gaps)
    state["broken"] = False
    repaired = asyncio.get_running_loop().time()
    await asyncio.sleep(2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    recovered = [t for n, conds, t in recorder.writes if n == name and conds[0].reason == "Passed"]
    assert recovered and recovered[0] - repaired <= CHEAP_RETRY_CAP + 0.01


async def test_many_refusing_servers_are_retried_within_the_probe_rate_together() -> None:
    world = World()
    names = [world.add(f"refusing{i}.example.com", address=f"10.0.1.{i}") for i in range(100)]
    asked: list[float] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        asked.append(asyncio.get_running_loop().time())
        return [ProbeResult(t, False, 0.01, ErrorKind.REFUSED, "connection refused") for t in plan.targets]

    settings = Settings(probe_interval=30, min_probe_interval=30, max_probe_rate=20)
    controller = Controller(settings, world, probe, Recorder(world).write)
    controller.changed_now(names)
    await run_for(controller, 60)
    # past the first doublings, 100 failing APIServices share the rate: 20/s, plus the jitter's tenth
    late = [t for t in asked if 30 <= t < 60]
    assert len(late) <= 30 * 20 * 1.12, len(late)
    assert len(late) >= 30 * 20 * 0.8, len(late)  # and each is still retried every ~5 s, not at the 30 s interval


async def test_few_apiservices_are_reprobed_at_the_min_interval_many_within_the_rate() -> None:
    world = World()
    names = [world.add(f"g{i}.example.com") for i in range(100)]
    recorder = Recorder(world)
    settings = Settings(probe_interval=10, min_probe_interval=1, max_probe_rate=20)
    controller = Controller(settings, world, lambda plan: asyncio.sleep(0, healthy(plan)), recorder.write)
    assert controller.periodic_interval() == 1  # nothing probed yet
    controller.changed_now(names[:5])
    await run_for(controller, 1)
    assert controller.periodic_interval() == 1  # 5 APIServices: 5 probes/s, within 20/s
    controller.changed_now(names)
    await run_for(controller, 1)
    assert controller.periodic_interval() == 5  # 100 / 20 per second
    for i in range(100, 400):
        controller.changed_now([world.add(f"g{i}.example.com")])
    await run_for(controller, 1)
    assert controller.periodic_interval() == 10  # 400 / 20 = 20 s, capped by --probe-interval


async def test_periodic_probes_of_a_few_apiservices_come_every_min_interval() -> None:
    world = World()
    name = world.add("quick.example.com")
    recorder = Recorder(world)
    controller = Controller(Settings(), world, lambda plan: asyncio.sleep(0, healthy(plan)), recorder.write)
    controller.changed_now([name])
    await run_for(controller, 30.5)
    # the first probe at once, the first periodic one at a random phase in [0, 4 s), then every
    # 3.6-4 s (jitter): 8 (phase 4 s, 4 s apart) to 10 (phase 0, 3.6 s apart); every 20 s would be 2-3
    assert 8 <= controller.stats.probes <= 10
    assert len(recorder.writes) == 1


async def test_a_server_gone_for_one_apiservice_rechecks_the_others_behind_it_at_once() -> None:
    world = World()
    shared = [world.add(f"s{i}.example.com", address="10.0.0.9") for i in range(20)]
    elsewhere = world.add("elsewhere.example.com", address="10.0.0.10")
    state = {"down": False}
    asked: list[tuple[str, float]] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        asked.append((plan.path, asyncio.get_running_loop().time()))
        if state["down"]:
            return [ProbeResult(t, False, 0.01, ErrorKind.REFUSED, "connection refused") if t.host == "10.0.0.9"
                    else ProbeResult(t, True, 0.01) for t in plan.targets]
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=30, min_probe_interval=30), world, probe, recorder.write)
    controller.changed_now([*shared, elsewhere])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(1)
    state["down"] = True
    down = asyncio.get_running_loop().time()
    await asyncio.sleep(31)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    flipped = [t for n, conds, t in recorder.writes if n in shared and conds[0].reason == "FailedDiscoveryCheck"]
    assert len(flipped) == 20
    # the first was found at its turn in the 30 s interval; the other 19 right after it, not at theirs
    assert max(flipped) - min(flipped) < 0.1
    assert min(flipped) > down
    # no news for an APIService on another endpoint: it was not checked with the others
    assert not [t for path, t in asked if path == "/apis/elsewhere.example.com/v1" and 0 <= t - min(flipped) < 0.1]


async def test_one_slow_answer_moves_nothing_and_a_slow_pace_shows_at_its_second_answer() -> None:
    world = World()
    name = world.add("paced.example.com")
    latencies = iter([0.01, 3.0, 0.01, 3.0, 3.0, 3.0])

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return [ProbeResult(t, True, next(latencies, 0.01)) for t in plan.targets]

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=10, min_probe_interval=10), world, probe, recorder.write)

    async def check_and_read() -> dict[str, Any]:
        await controller.check(name)
        return recorder.last(name)

    assert (await check_and_read())["Degraded"] == ("False", "AsExpected")
    assert (await check_and_read())["Degraded"] == ("False", "AsExpected")  # a spike: no write
    assert (await check_and_read())["Degraded"] == ("False", "AsExpected")
    assert len(recorder.writes) == 1
    assert (await check_and_read())["Degraded"] == ("False", "AsExpected")  # slow once more: one answer
    assert (await check_and_read())["Degraded"] == ("True", "SlowDiscovery")  # and again: the pace is slow
    assert len(recorder.writes) == 2


async def test_no_path_probe_while_every_endpoint_is_silent() -> None:
    world = World()
    name = world.add("hung.example.com", address="10.0.0.7")
    asked_through: list[str] = []

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        asked_through.append(plan.path)
        return healthy(plan)

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return [ProbeResult(t, False, 0.0, ErrorKind.TIMEOUT, "timeout: has answered no request") for t in plan.targets]

    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, lambda: asyncio.get_running_loop().time())
    recorder = Recorder(world)
    silent = {"now": False}
    controller = Controller(Settings(), world, probe, recorder.write, path=checker,
                            silent=lambda target: silent["now"] and target.host == "10.0.0.7")
    await controller.check(name)
    assert asked_through == ["/apis/hung.example.com/v1"]  # endpoints not known silent: the path is asked
    silent["now"] = True
    asked_through.clear()
    checker.forget(name)  # due again
    await controller.check(name)
    assert asked_through == []  # it would relay to the same silent endpoint
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_a_check_that_waited_for_a_probe_slot_while_its_endpoints_went_silent_asks_no_path() -> None:
    """In a mass hang most checks wait for a slot; whether the endpoints are silent is asked once the
    slot is ours, or each waiter's path probe held it for a whole budget (1,000 behind one hung
    server: the last 150 flipped at 20 a second)."""
    world = World()
    name = world.add("hung.example.com", address="10.0.0.7")
    other = world.add("busy.example.com", address="10.0.0.8")
    asked_through: list[str] = []
    release = asyncio.Event()
    silent = {"now": False}

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        asked_through.append(plan.path)
        return healthy(plan)

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if plan.targets[0].host == "10.0.0.8":
            await release.wait()  # holds the only slot
            return healthy(plan)
        return [ProbeResult(t, False, 0.0, ErrorKind.TIMEOUT, "timeout: has answered no request") for t in plan.targets]

    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, lambda: asyncio.get_running_loop().time())
    recorder = Recorder(world)
    controller = Controller(Settings(concurrency=1), world, probe, recorder.write, path=checker,
                            silent=lambda target: silent["now"] and target.host == "10.0.0.7")
    busy = asyncio.create_task(controller.check(other))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(controller.check(name))
    await asyncio.sleep(0.01)  # it waits for the slot; meanwhile its endpoint is judged silent
    silent["now"] = True
    asked_through.clear()
    release.set()
    await asyncio.gather(busy, waiting)
    assert asked_through == []
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_a_path_probe_beside_a_probe_that_finds_its_endpoints_silent_is_not_waited_for() -> None:
    """The probe waits on its endpoint's lane while earlier probes time out, then is judged silent at
    once; the path probe sent beside it would wait out a budget through kube-apiserver, which relays to
    the same endpoint, and hold the slot meanwhile."""
    world = World()
    name = world.add("hung.example.com", address="10.0.0.7")
    silent = {"now": False}
    asked: list[float] = []

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        asked.append(asyncio.get_running_loop().time())
        await asyncio.sleep(5)
        return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout") for t in plan.targets]

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        await asyncio.sleep(1)  # in the endpoint's lane, while the probes ahead of it time out
        silent["now"] = True
        return [ProbeResult(t, False, 0.0, ErrorKind.TIMEOUT, "timeout: has answered no request") for t in plan.targets]

    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, lambda: asyncio.get_running_loop().time())
    recorder = Recorder(world)
    controller = Controller(Settings(), world, probe, recorder.write, path=checker,
                            silent=lambda target: silent["now"])
    started = asyncio.get_running_loop().time()
    await controller.check(name)
    assert asyncio.get_running_loop().time() - started == pytest.approx(1, abs=0.01)
    assert len(asked) == 1  # it was sent beside the probe, and dropped
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_no_second_budget_through_kube_apiserver_once_the_endpoints_have_just_gone_silent() -> None:
    world = World()
    name = world.add("hung.example.com", address="10.0.0.7")
    hung: dict[str, Any] = {"now": False, "since": 0.0}
    asked_through: list[float] = []

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        asked_through.append(asyncio.get_running_loop().time())
        if hung["now"]:
            await asyncio.sleep(5)
            return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout") for t in plan.targets]
        return healthy(plan)

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if hung["now"]:
            await asyncio.sleep(5)  # the budget, then the prober knows it as silent
            return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout: no complete answer") for t in plan.targets]
        return healthy(plan)

    clock = lambda: asyncio.get_running_loop().time()  # noqa: E731
    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, clock)
    recorder = Recorder(world)
    controller = Controller(Settings(), world, probe, recorder.write, path=checker,
                            silent=lambda target: hung["now"] and clock() - hung["since"] >= 5)
    await controller.check(name)  # the path was asked: not due again within the interval
    hung["now"], hung["since"] = True, clock()
    started = clock()
    await controller.check(name)
    assert clock() - started == pytest.approx(5, abs=0.01)  # one budget, not two
    assert len(asked_through) == 1
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_a_check_that_raises_ends_in_an_unknown_verdict_and_backs_off() -> None:
    """Every check ends in a verdict: a probe stack that raises (a bug, a hostile answer we did not
    foresee) replaces the last verdict with Unknown/CheckFailed naming the error, instead of leaving
    Available=True standing while it retries every second."""
    world = World()
    name = world.add("breaks.example.com")
    state = {"raise": False}

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if state["raise"]:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return healthy(plan)

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=20, min_probe_interval=20), world, probe, recorder.write)
    await controller.check(name)
    assert recorder.last(name)["Available"] == ("True", "Passed")
    state["raise"] = True
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.last(name)["Available"] == ("Unknown", "CheckFailed")
    message = next(c for c in [w[1] for w in recorder.writes if w[0] == name][-1] if c.type.endswith("Available"))
    assert "RecursionError" in message.message
    # backed off (1, 2, 4, 8, 16 s ...), not once a second
    assert controller.stats.checks <= 8, controller.stats.checks


async def test_throttled_status_writes_back_off_together_and_all_land_when_it_ends() -> None:
    """100 APIServices, kube-apiserver answering every status write 429 (Retry-After: 1) for 60 s:
    at most 5 write requests a second on average meanwhile, probes at their usual pace, and every
    verdict written within 30 s after (issue: nothing storms)."""
    world = World()
    names = [world.add(f"g{i}.example.com") for i in range(100)]
    recorder = Recorder(world)
    loop = asyncio.get_running_loop()
    throttled_until = loop.time() + 60
    attempts: list[float] = []

    async def write(name: str, conditions: Sequence[Condition]) -> str:
        attempts.append(loop.time())
        if loop.time() < throttled_until:
            raise WriteFailed("HTTP 429: Too many requests, please try again later.", retry_after=1.0)
        return await recorder.write(name, conditions)

    controller = Controller(Settings(), world, lambda plan: asyncio.sleep(0, healthy(plan)), write)
    controller.changed_now(names)
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(60)
    during = len(attempts)
    probes_during = controller.stats.probes
    await asyncio.sleep(30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    print(f"write requests while throttled: {during} in 60 s; probes: {probes_during}")
    assert during / 60 <= 5, during
    assert probes_during >= 100 * 60 / 20, probes_during  # periodic probes went on (interval <= 20 s)
    landed = {n for n, _, t in recorder.writes if t <= throttled_until + 30}
    assert landed == set(names)


async def test_a_refusal_of_probes_sent_without_our_token_says_why_the_token_is_missing() -> None:
    world = World()
    name = world.add("refuses.example.com")
    world.apiservices[name]["spec"].pop("insecureSkipTLSVerify")  # verified TLS: the token would be sent

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return [ProbeResult(t, False, 0.01, ErrorKind.UNAUTHORIZED, "HTTP 401 (the probe's identity was refused)",
                            401) for t in plan.targets]

    recorder = Recorder(world)
    controller = Controller(Settings(), world, probe, recorder.write,
                            token_problem=lambda: "minting the probe identity's token failed: no answer")
    await controller.check(name)
    available = [w[1] for w in recorder.writes if w[0] == name][-1][0]
    assert (str(available.status), available.reason) == ("Unknown", "ProbeUnauthorized")
    assert "went without the probe identity's token (minting the probe identity's token failed" in available.message


async def test_a_failing_metrics_api_names_the_hpas_it_stalls_and_a_working_one_reads_none() -> None:
    world = World()
    metrics = world.add("metrics.k8s.io")
    other = world.add("wardle.example.com", address="10.0.0.2")
    down = {"10.0.0.1"}
    asked: list[tuple[str, str | None]] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return [ProbeResult(t, False, 0.01, ErrorKind.REFUSED, "connection refused") if t.host in down
                else ProbeResult(t, True, 0.01) for t in plan.targets]

    async def stalled(group: str, host: str | None) -> list[str]:
        asked.append((group, host))
        return ["shop/web"]

    recorder = Recorder(world)
    controller = Controller(Settings(), world, probe, recorder.write, consumers=stalled)
    await controller.check(metrics)
    await controller.check(other)
    assert recorder.last(metrics)["Available"] == ("False", "FailedDiscoveryCheck")
    written = recorder.writes[-2][1][0].message
    assert written.endswith("; stalling 1 HorizontalPodAutoscaler: shop/web")
    assert asked == [("metrics.k8s.io", "metrics.k8s.io.ns.svc")]
    down.clear()
    await controller.check(metrics)
    assert recorder.last(metrics)["Available"] == ("True", "Passed") and len(asked) == 1


async def test_kube_apiservers_message_changing_during_a_hung_check_never_keeps_it_from_a_verdict() -> None:
    """On a hung server kube-apiserver's own check ends every 5 s, its message changing each time
    (seen in test_faults' tcp-hang): each change asks for a fresh check, and cancelling the one
    running at each kept the verdict from ever being written."""
    world = World()
    name = world.add("hung.example.com")
    started: list[float] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(5)
        return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout: no complete answer within 5s")
                for t in plan.targets]

    recorder = Recorder(world)
    controller = Controller(Settings(probe_interval=10, min_probe_interval=10), world, probe, recorder.write)
    controller.changed_now([name])
    task = asyncio.create_task(controller.run())
    for _ in range(6):
        await asyncio.sleep(4.9)
        controller.kube_changed(name)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.writes and recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")
    assert recorder.writes[0][2] <= 5.1  # the first check ended in its verdict
    assert len(started) >= 5  # and each change was followed by a check of its own


async def test_each_step_of_kube_apiservers_catching_up_is_looked_at_again_from_the_base() -> None:
    """After a repair kube-apiserver first lifts its 503 (its own Available), then lists the group as
    Current in its aggregated discovery within milliseconds: the second step is looked for 0.1 s
    after the first is seen, not after a backoff doubled by it."""
    world = World()
    name = world.add("repaired.example.com")
    gate = {"open": False}

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        if gate["open"]:
            return healthy(plan)
        return [ProbeResult(t, False, 0.0, ErrorKind.HTTP_STATUS, "HTTP 503", status_code=503,
                            body="service unavailable") for t in plan.targets]

    class StaleClients:
        async def view(self, instances: Sequence[Any], server_name: str, plan: ProbePlan,
                       own_resources: Sequence[str], everything: bool = False, ask: bool = True) -> ClientView:
            return ClientView(tuple(InstanceView(i, Freshness.STALE) for i in instances))

    server = {"repaired": False}

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if server["repaired"]:
            return healthy(plan)
        return [ProbeResult(t, False, 0.0, ErrorKind.HTTP_STATUS, "HTTP 500", status_code=500) for t in plan.targets]

    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, lambda: asyncio.get_running_loop().time())
    recorder = Recorder(world)

    async def write(target: str, conditions: Sequence[Condition]) -> str:
        made = await recorder.write(target, conditions)
        kube = {"type": "Available", "status": "True", "reason": "Passed", "lastTransitionTime": utc_now()} \
            if gate["open"] else \
            {"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck", "message": "bad status: 500"}
        world.apiservices[target]["status"]["conditions"].append(kube)  # kube-apiserver's own, beside ours
        return made

    controller = Controller(Settings(), world, probe, write, path=checker, clients=StaleClients(),
                            retry=RetryPolicy(rand=lambda: 0.0))
    for _ in range(4):  # an outage: the backoff grows
        await controller.check(name)
    assert recorder.last(name)["Available"] == ("False", "FailedDiscoveryCheck")
    server["repaired"] = True
    checker.forget(name)
    await controller.check(name)
    assert recorder.last(name)["Available"] == ("False", "AwaitingKubeAPIServer")
    assert controller.retry.delay(name, 10.0) == pytest.approx(0.1)
    gate["open"] = True  # our write made kube-apiserver re-check: its Available is True, its proxy passes
    world.apiservices[name]["status"]["conditions"][-1] = {"type": "Available", "status": "True", "reason": "Passed",
                                                           "lastTransitionTime": utc_now()}
    checker.forget(name)
    await controller.check(name)
    assert recorder.last(name)["Available"] == ("Unknown", "AwaitingKubeAPIServer")
    assert controller.retry.delay(name, 10.0) == pytest.approx(0.1)  # a new step: from the base again
    await controller.check(name)
    assert controller.retry.delay(name, 10.0) == pytest.approx(0.2)  # the same step: it backs off


async def test_a_relayed_500_beside_a_passing_endpoint_reads_the_clients_view_like_any_pass() -> None:
    """The moment a server begins to fail: our probe of its endpoint passed, kube-apiserver's request
    met the 500. Available stays True/Passed (the path works; that endpoint fails), and its message
    must be the one a plain pass writes: it lacked the clients' view, one more status write per flip
    (make bench, N = 1,000: 1.010 writes per transition)."""
    world = World()
    name = world.add("flipping.example.com")
    asked: list[int] = []

    async def through_kube_apiserver(plan: ProbePlan) -> list[ProbeResult]:
        return [ProbeResult(t, False, 0.0, ErrorKind.HTTP_STATUS, "HTTP 500", status_code=500, body="boom")
                for t in plan.targets]

    class CurrentClients:
        async def view(self, instances: Sequence[Any], server_name: str, plan: ProbePlan,
                       own_resources: Sequence[str], everything: bool = False, ask: bool = True) -> ClientView:
            asked.append(len(instances))
            return ClientView(tuple(InstanceView(i, Freshness.CURRENT) for i in instances))

    checker = PathChecker("kubeconfig", ClusterAccess("https://10.96.0.1:443", None, False), world,
                          through_kube_apiserver, None, lambda: asyncio.get_running_loop().time())
    recorder = Recorder(world)
    controller = Controller(Settings(), world, healthy_async, recorder.write, path=checker, clients=CurrentClients())
    await controller.check(name)
    available = next(c for c in recorder.writes[-1][1] if c.type.endswith("/Available"))
    assert (str(available.status), available.reason) == ("True", "Passed")
    assert asked and "aggregated discovery Current in 1/1 instances" in available.message


async def test_a_sibling_whose_check_was_running_when_its_shared_server_went_silent_looks_again() -> None:
    """What one APIService's probe learns about a shared server is news for the others behind it. One
    whose check is already running finishes it, but what it gathered may predate the news: it looks
    again at once, not at its periodic turn (a mass hang's last flips came up to 14 s late)."""
    world = World()
    first = world.add("first.example.com", address="10.0.0.7")
    second = world.add("second.example.com", address="10.0.0.7")
    hung = {"now": False}
    held = asyncio.Event()
    probed: dict[str, int] = {}

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        group = plan.path.split("/")[2]
        probed[group] = probed.get(group, 0) + 1
        if group == "second.example.com" and probed[group] == 2:
            await held.wait()  # started before the hang, answered before it: old evidence
            return healthy(plan)
        if hung["now"]:
            await asyncio.sleep(2)  # the budget, shortened
            return [ProbeResult(t, False, 2.0, ErrorKind.TIMEOUT, "timeout: no complete answer") for t in plan.targets]
        return healthy(plan)

    recorder = Recorder(world)
    # periodic checks far apart: only news brings a check within the test
    controller = Controller(Settings(probe_interval=60, min_probe_interval=60), world, probe, recorder.write)
    await controller.check(first)
    await controller.check(second)
    loop = asyncio.create_task(controller.run())
    controller.changed_now([second])
    await asyncio.sleep(0.1)  # its check runs, held in its probe
    hung["now"] = True
    await controller.check(first)  # the shared endpoint stops answering: news for `second`
    assert recorder.last(first)["Available"] == ("False", "FailedDiscoveryCheck")
    await asyncio.sleep(0.1)  # the news is taken from the queue while its check still runs
    held.set()
    await asyncio.sleep(0.5)  # its old answer ends its check; it looks again at once
    assert probed["second.example.com"] == 3
    await asyncio.sleep(2.5)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert recorder.last(second)["Available"] == ("False", "FailedDiscoveryCheck")


async def test_a_silent_endpoint_that_answers_again_has_every_apiservice_behind_it_looked_at() -> None:
    """The probe that keeps asking a silent endpoint is not waited for by any check: its answer is
    the news that the endpoint is back, for every APIService behind it."""
    world = World()
    first = world.add("first.example.com", address="10.0.0.7")
    second = world.add("second.example.com", address="10.0.0.7")
    elsewhere = world.add("elsewhere.example.com", address="10.0.0.8")

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return healthy(plan)

    controller = Controller(Settings(), world, probe, Recorder(world).write)
    for name in (first, second, elsewhere):
        await controller.check(name)
    controller.answered_again(Target("10.0.0.7", 8443))
    assert first in controller.queue and second in controller.queue and elsewhere not in controller.queue


async def test_kube_apiservers_own_update_reaching_the_index_before_our_write_causes_no_second_write() -> None:
    """kube-apiserver updates its own Available on the same object as we write ours; when its update
    lands just before ours, the watch brings it first, and the index shows a newer object that still
    holds our old verdict (a mass flip at N = 1,000 wrote 210 times for 200 transitions, make bench)."""
    world = World()
    name = world.add("g.example.com")
    writes: list[Sequence[Condition]] = []
    failing = [False]

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if failing[0]:
            return [ProbeResult(t, False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 500") for t in plan.targets]
        return healthy(plan)

    async def write(target: str, conditions: Sequence[Condition]) -> str:
        writes.append(conditions)
        obj = world.apiservices[target]
        if len(writes) == 1:  # the first verdict: the watch brings it back at once
            obj.setdefault("status", {})["conditions"] = [c.to_api() for c in conditions]
            obj["metadata"]["resourceVersion"] = "2"
            return "2"
        # at the API, kube-apiserver's own update (4) landed just before ours (5); only its has reached the
        # index (the watch replaces the object there, as kopf's index does)
        world.apiservices[target] = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "4"}}
        return "5"

    controller = Controller(Settings(), world, probe, write)
    await controller.check(name)
    failing[0] = True
    await controller.check(name)
    await controller.check(name)  # kube-apiserver's update is news: we look again before ours is back
    assert [c[0].status for c in writes] == [Status.TRUE, Status.FALSE]
    controller.arrived(name, "5")  # ours is back: the index stands from now on
    world.apiservices[name]["metadata"]["resourceVersion"] = "5"
    world.apiservices[name]["status"]["conditions"] = [c.to_api() for c in writes[-1]]
    await controller.check(name)
    assert len(writes) == 2
