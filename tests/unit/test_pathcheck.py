"""PathChecker's bound on kube-apiserver's load, with a fake prober and clock: at most one path
probe per instance per APIService per interval, unless what the endpoints say has changed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from apiservice_operator.core.model import ErrorKind, ProbePlan, ProbeResult, Status, Target
from apiservice_operator.core.path import PathOutcome
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker, effective_mode, kube_available

EP = Target("10.0.0.1", 8443)
PLAN = ProbePlan((EP,), "/apis/demo.example.com/v1", "demo.example.com/v1", "demo.default.svc", None, False)
KUBERNETES_SLICE = {"ports": [{"name": "https", "port": 6443}],
                    "endpoints": [{"addresses": ["10.250.0.2"]}, {"addresses": ["10.250.0.3"]}]}
ACCESS = ClusterAccess(server="https://127.0.0.1:6443", ca=b"CA", in_cluster=True)


class Slices:
    def slices(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [KUBERNETES_SLICE] if (namespace, name) == ("default", "kubernetes") else []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def checker(mode: str = "instances") -> tuple[PathChecker, list[ProbePlan], Clock]:
    sent: list[ProbePlan] = []
    clock = Clock()

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        sent.append(plan)
        return [ProbeResult(t, True, 0.01, status_code=200) for t in plan.targets]

    return PathChecker(mode, ACCESS, Slices(), probe, None, clock), sent, clock


async def test_each_instance_is_asked_once_per_interval_while_the_endpoints_say_the_same() -> None:
    path, sent, clock = checker()
    direct = [ProbeResult(EP, True, 0.01)]
    first, fresh = await path.check("demo", PLAN, None, interval=10.0)
    first = path.settle("demo", first, direct)
    assert fresh and [r.outcome for r in first] == [PathOutcome.PASSED, PathOutcome.PASSED]
    assert [t.endpoint for t in sent[0].targets] == ["10.250.0.2:6443", "10.250.0.3:6443"]
    assert (sent[0].server_name, sent[0].ca_bundle) == ("kubernetes.default.svc", b"CA")
    clock.now += 3
    again, fresh = await path.check("demo", PLAN, direct, interval=10.0)
    assert not fresh and again == first and len(sent) == 1
    assert not path.due("demo", 10.0)
    clock.now += 7
    assert path.due("demo", 10.0)


async def test_a_change_at_the_endpoints_asks_the_instances_again_at_once() -> None:
    path, sent, clock = checker()
    passing = [ProbeResult(EP, True, 0.01)]
    results, _ = await path.check("demo", PLAN, passing, interval=10.0)
    path.settle("demo", results, passing)
    clock.now += 1
    _, fresh = await path.check("demo", PLAN, passing, interval=10.0)
    assert not fresh and len(sent) == 1
    _, fresh = await path.check("demo", PLAN, [ProbeResult(EP, False, 5.0)], interval=10.0)
    assert fresh and len(sent) == 2


async def test_a_gated_answer_is_asked_again_at_the_next_check() -> None:
    """kube-apiserver's own 503 lifts milliseconds after its check passes: reused for the interval,
    it held a recovered verdict back by seconds."""
    sent: list[ProbePlan] = []
    clock = Clock()

    async def gated(plan: ProbePlan) -> list[ProbeResult]:
        sent.append(plan)
        return [ProbeResult(t, False, 0.01, None, "bad status: 503", 503, "service unavailable") for t in plan.targets]

    path = PathChecker("instances", ACCESS, Slices(), gated, None, clock)
    direct = [ProbeResult(EP, True, 0.01)]
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert {r.outcome for r in results} == {PathOutcome.GATED}
    path.settle("demo", results, direct)
    clock.now += 1
    _, fresh = await path.check("demo", PLAN, direct, interval=10.0)
    assert fresh and len(sent) == 2


async def test_forget_drops_what_was_kept() -> None:
    path, _, _ = checker()
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    path.settle("demo", results, [ProbeResult(EP, True, 0.01)])
    assert not path.due("demo", 10.0)
    path.forget("demo")
    assert path.due("demo", 10.0)


async def test_what_instances_met_while_the_server_was_down_is_forgotten_when_it_comes_back() -> None:
    """Found by make bench: a killed server's recovery read as ControlPlaneUnreachable, because the
    instances' last own answers ("dial ... refused") stood in for kube-apiserver's gated 503."""
    answers: list[ProbeResult] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if plan.path == "/livez":  # the instances themselves are alive
            return [ProbeResult(t, False, 0.01, None, "ok", 200) for t in plan.targets]
        return [dataclasses.replace(answers[0], target=t)
                for t in plan.targets]

    path = PathChecker("instances", ACCESS, Slices(), probe, None, Clock())
    down, back = [ProbeResult(EP, False, 0.01, ErrorKind.REFUSED, "connection refused")], [ProbeResult(EP, True, 0.01)]
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "Error trying to reach service: dial tcp 10.0.0.1:8443: connect: connection refused")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    assert {r.outcome for r in path.settle("demo", fresh, down)} == {PathOutcome.UNREACHABLE}
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "service unavailable")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    assert {r.outcome for r in path.settle("demo", fresh, back)} == {PathOutcome.GATED}
    # a cut while the endpoints keep passing: that memory stands through kube-apiserver's gate
    answers[:] = [ProbeResult(Target("x", 1), False, 5.0, ErrorKind.TIMEOUT, "timeout")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    assert {r.outcome for r in path.settle("demo", fresh, back)} == {PathOutcome.UNREACHABLE}
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "service unavailable")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    kept = path.settle("demo", fresh, back)
    assert {(r.outcome, r.remembered) for r in kept} == {(PathOutcome.UNREACHABLE, True)}


async def test_outside_the_cluster_the_kubeconfig_server_is_asked_and_named() -> None:
    outside = ClusterAccess(server="https://10.250.255.2:6443", ca=b"CA", in_cluster=False)
    # `auto` outside the cluster is decided per set of instances (test_pathcheck_auto.py)
    assert effective_mode("auto", outside) == "auto" and effective_mode("auto", ACCESS) == "instances"
    assert effective_mode("kubeconfig", outside) == "kubeconfig"
    path, sent, _ = checker("kubeconfig")
    path.access = outside
    await path.check("demo", PLAN, None, interval=10.0)
    assert [t.endpoint for t in sent[0].targets] == ["10.250.255.2:6443"]
    assert sent[0].server_name == "10.250.255.2"
    evidence = await path.evidence({}, PLAN, ())
    assert evidence.via == "the kubeconfig's server https://10.250.255.2:6443"


def test_kube_apiservers_own_condition_is_read_as_evidence() -> None:
    obj = {"status": {"conditions": [{"type": "Available", "status": "False", "message": "dial tcp: i/o timeout"},
                                     {"type": "apiservice-operator.io/Available", "status": "True"}]}}
    assert kube_available(obj) == (Status.FALSE, "dial tcp: i/o timeout")
    assert kube_available({}) == (None, "")


async def test_a_timeout_is_blamed_on_the_path_only_when_the_instance_itself_answers() -> None:
    """A frozen kube-apiserver times out too: then nothing is known about the API's path."""
    asked: list[str] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        asked.append(plan.path)
        if plan.path == "/livez":  # 10.250.0.2 is alive, 10.250.0.3 is frozen
            return [ProbeResult(t, False, 0.01, None, "ok", 200) if t.host == "10.250.0.2" else
                    ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout") for t in plan.targets]
        return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout") for t in plan.targets]

    path = PathChecker("instances", ACCESS, Slices(), probe, None, Clock())
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert asked == [PLAN.path, "/livez"]
    assert [(r.instance.host, r.outcome) for r in results] == [
        ("10.250.0.2", PathOutcome.UNREACHABLE), ("10.250.0.3", PathOutcome.NO_ROUTE)]
    assert "does not answer (/livez too)" in results[1].detail


def frozen_until(thaw: float, asked: list[tuple[str, float]]) -> Any:
    """A kube-apiserver frozen (SIGSTOP) from the start until `thaw` seconds: the path request
    times out after the 5 s budget, /livez answers when the instance thaws."""
    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        asked.append((plan.path, started))
        if plan.path == "/livez":
            await asyncio.sleep(max(0.0, thaw - started) + 0.01)
            return [ProbeResult(t, False, loop.time() - started, None, "ok", 200) for t in plan.targets]
        await asyncio.sleep(5.0)
        return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout") for t in plan.targets]
    return probe


@pytest.mark.looptime(start=0)
async def test_a_timeout_while_kube_apiserver_was_frozen_is_not_blamed_on_the_path_when_it_thaws_at_once() -> None:
    """The fault suite's race: the path probe times out at 5 s, the instance thaws at 5.2 s. /livez
    asked only after the timeout answers in 0.2 s and would blame the path; asked beside the waiting
    request (at 1 s) it waits out the freeze, and the freeze is what it shows."""
    asked: list[tuple[str, float]] = []
    path = PathChecker("instances", ACCESS, Slices(), frozen_until(5.2, asked), None, Clock())
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert [(p, round(t, 1)) for p, t in asked] == [(PLAN.path, 0.0), ("/livez", 1.0)]
    assert {r.outcome for r in results} == {PathOutcome.NO_ROUTE}
    assert all("does not answer (/livez too)" in r.detail for r in results)


@pytest.mark.looptime(start=0)
async def test_a_timeout_while_kube_apiserver_answers_livez_is_blamed_on_the_path_with_no_wait_after() -> None:
    asked: list[tuple[str, float]] = []
    path = PathChecker("instances", ACCESS, Slices(), frozen_until(0.0, asked), None, Clock())
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert {r.outcome for r in results} == {PathOutcome.UNREACHABLE}
    assert asyncio.get_running_loop().time() == pytest.approx(5.0)  # /livez had answered meanwhile


@pytest.mark.looptime(start=0)
async def test_path_probes_waiting_together_share_one_livez() -> None:
    """A hundred path probes stuck behind a frozen kube-apiserver: one /livez sent at 1 s serves
    them all; one that began waiting after it was sent gets a newer one."""
    asked: list[tuple[str, float]] = []
    path = PathChecker("instances", ACCESS, Slices(), frozen_until(5.2, asked), None, Clock())

    async def late() -> Any:
        await asyncio.sleep(1.5)
        return await path.check("late", PLAN, None, interval=10.0)

    checks = [path.check(f"demo{i}", PLAN, None, interval=10.0) for i in range(100)]
    results = await asyncio.gather(*checks, late())
    assert [round(t, 1) for p, t in asked if p == "/livez"] == [1.0, 2.5]
    assert {r.outcome for found, _ in results for r in found} == {PathOutcome.NO_ROUTE}


async def test_recall_reads_fresh_answers_as_settle_would_and_keeps_nothing() -> None:
    """explain: the verdict it shows is the one the controller's next check reaches, remembered
    answers included, and asking it changes nothing the controller keeps."""
    answers: list[ProbeResult] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        if plan.path == "/livez":  # the instances themselves are alive
            return [ProbeResult(t, False, 0.01, None, "ok", 200) for t in plan.targets]
        return [dataclasses.replace(answers[0], target=t) for t in plan.targets]

    path = PathChecker("instances", ACCESS, Slices(), probe, None, Clock())
    back = [ProbeResult(EP, True, 0.01)]
    answers[:] = [ProbeResult(Target("x", 1), False, 5.0, ErrorKind.TIMEOUT, "timeout")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    path.settle("demo", fresh, back)
    kept = dict(path._memory)
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "service unavailable")]
    gated = await path.ask(PLAN)
    assert {r.outcome for r in gated} == {PathOutcome.GATED}
    assert {(r.outcome, r.remembered) for r in path.recall("demo", gated, back)} == {(PathOutcome.UNREACHABLE, True)}
    assert path._memory == kept


async def test_recall_forgets_what_the_instances_met_while_the_server_was_down_as_settle_does() -> None:
    """explain right after a repair: what the instances met during the outage is not the path."""
    answers: list[ProbeResult] = []

    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        return [dataclasses.replace(answers[0], target=t) for t in plan.targets]

    path = PathChecker("instances", ACCESS, Slices(), probe, None, Clock())
    down, back = [ProbeResult(EP, False, 0.01, ErrorKind.REFUSED, "connection refused")], [ProbeResult(EP, True, 0.01)]
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "Error trying to reach service: dial tcp 10.0.0.1:8443: connect: connection refused")]
    fresh, _ = await path.check("demo", PLAN, None, interval=0.0)
    path.settle("demo", fresh, down)
    answers[:] = [ProbeResult(Target("x", 1), False, 0.01, ErrorKind.HTTP_STATUS, "bad status: 503", 503,
                              "service unavailable")]
    gated = await path.ask(PLAN)
    assert {(r.outcome, r.remembered) for r in path.recall("demo", gated, down)} == {(PathOutcome.UNREACHABLE, True)}
    assert {(r.outcome, r.remembered) for r in path.recall("demo", gated, back)} == {(PathOutcome.GATED, False)}
