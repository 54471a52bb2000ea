"""`--path-probe auto` outside the cluster: each kube-apiserver instance where all of them answer /livez
from where the operator runs (a control plane on the same network), the kubeconfig's server where
they do not, decided at first use, when the set of instances changes, and every few minutes while
falling back; never per check. The pure decision with plain data, then PathChecker with a fake
prober and clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apiservice_operator.core.model import ErrorKind, ProbePlan, ProbeResult, Target
from apiservice_operator.core.path import (
    AUTO_RETRY_SECONDS,
    AutoChoice,
    PathOutcome,
    PathProbeMode,
    auto_due,
    choose_auto,
    kubeconfig_via,
    livez_silent,
)
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker

A, B = Target("10.250.0.2", 6443), Target("10.250.0.3", 6443)
EP = Target("10.0.0.1", 8443)
PLAN = ProbePlan((EP,), "/apis/demo.example.com/v1", "demo.example.com/v1", "demo.default.svc", None, False)
OUTSIDE = ClusterAccess(server="https://127.0.0.1:6443", ca=b"CA", in_cluster=False)
INSIDE = ClusterAccess(server="https://10.96.0.1:443", ca=b"CA", in_cluster=True)


# --- the pure decision -------------------------------------------------------------------------


def test_auto_is_instances_in_the_cluster_and_decided_outside_it() -> None:
    assert PathProbeMode.AUTO.effective(in_cluster=True) is PathProbeMode.INSTANCES
    assert PathProbeMode.AUTO.effective(in_cluster=False) is PathProbeMode.AUTO
    assert PathProbeMode.KUBECONFIG.effective(in_cluster=True) is PathProbeMode.KUBECONFIG
    assert PathProbeMode.INSTANCES.effective(in_cluster=False) is PathProbeMode.INSTANCES


def test_every_instance_answering_chooses_the_instances() -> None:
    assert choose_auto((A, B), {}, 5.0) == AutoChoice(PathProbeMode.INSTANCES, (A, B), 5.0, "")


def test_one_silent_instance_chooses_the_kubeconfig_server_and_names_it() -> None:
    choice = choose_auto((A, B), {B: "timeout: no complete answer within 5s"}, 5.0)
    assert (choice.mode, choice.instances) == (PathProbeMode.KUBECONFIG, (A, B))
    assert choice.why == ("the instances in default/kubernetes do not answer from here "
                          "(10.250.0.3:6443: timeout: no complete answer within 5s)")
    assert kubeconfig_via("https://127.0.0.1:6443", choice.why) == (
        "the kubeconfig's server https://127.0.0.1:6443: the instances in default/kubernetes do not answer "
        "from here (10.250.0.3:6443: timeout: no complete answer within 5s)")
    both = choose_auto((A, B), {A: "connection refused", B: "no route to host"}, 5.0)
    assert "(10.250.0.2:6443: connection refused; 10.250.0.3:6443: no route to host)" in both.why


def test_no_instances_listed_chooses_the_kubeconfig_server() -> None:
    choice = choose_auto((), {}, 5.0)
    assert (choice.mode, choice.why) == (PathProbeMode.KUBECONFIG, "default/kubernetes lists no instances")


def test_the_kubeconfig_server_is_named_alone_where_nothing_was_chosen() -> None:
    assert kubeconfig_via("https://127.0.0.1:6443") == "the kubeconfig's server https://127.0.0.1:6443"


def test_the_instances_are_asked_again_only_at_first_use_on_a_new_set_and_every_few_minutes_when_falling_back() -> None:
    assert auto_due(None, (A,), 0.0)
    chose_instances = AutoChoice(PathProbeMode.INSTANCES, (A, B), 100.0)
    assert not auto_due(chose_instances, (A, B), 100.0 + 10 * AUTO_RETRY_SECONDS)
    assert auto_due(chose_instances, (A,), 101.0)  # one left
    assert auto_due(chose_instances, (A, B, Target("10.250.0.4", 6443)), 101.0)  # one came
    fell_back = AutoChoice(PathProbeMode.KUBECONFIG, (A, B), 100.0, "why")
    assert not auto_due(fell_back, (A, B), 100.0 + AUTO_RETRY_SECONDS - 1)
    assert auto_due(fell_back, (A, B), 100.0 + AUTO_RETRY_SECONDS)
    assert auto_due(fell_back, (A,), 101.0)
    assert AUTO_RETRY_SECONDS <= 300  # "every few minutes": a healed network is picked up soon enough


def test_any_http_answer_to_livez_in_time_counts_as_answering() -> None:
    answers = [
        ProbeResult(A, False, 0.01, ErrorKind.INVALID_DOCUMENT, "not a discovery document", 200),
        ProbeResult(B, False, 0.01, ErrorKind.UNAUTHORIZED, "HTTP 403", 403),
    ]
    assert livez_silent((A, B), answers, 2.5) == {}


def test_livez_silent_names_why_each_instance_did_not_answer() -> None:
    c, d = Target("10.250.0.4", 6443), Target("10.250.0.5", 6443)
    answers = [
        ProbeResult(A, True, 0.01, None, "ok", 200),
        ProbeResult(B, False, 0.01, ErrorKind.REFUSED, "connection refused"),
        ProbeResult(c, False, 3.0, None, "ok", 200),  # a frozen instance that came back meanwhile
    ]
    assert livez_silent((A, B, c, d), answers, 2.5) == {
        B: "connection refused",
        c: "answered /livez only after 3.0s",
        d: "no answer to /livez within 2.5s",
    }


# --- PathChecker ---------------------------------------------------------------------------------


class Slices:
    def __init__(self, *instances: Target) -> None:
        self.instances = list(instances)

    def slices(self, namespace: str, name: str) -> list[dict[str, Any]]:
        if (namespace, name) != ("default", "kubernetes"):
            return []
        return [{"ports": [{"name": "https", "port": 6443}],
                 "endpoints": [{"addresses": [t.host]} for t in self.instances]}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Prober:
    """Instances in `cut` are not reached from here (their /livez and discovery alike); the
    kubeconfig's server 127.0.0.1 and every other instance answer."""

    def __init__(self, *cut: Target, hang: bool = False) -> None:
        self.cut = set(cut)
        self.hang = hang
        self.sent: list[ProbePlan] = []

    def livez(self) -> list[ProbePlan]:
        return [p for p in self.sent if p.path == "/livez"]

    def discovery(self) -> list[ProbePlan]:
        return [p for p in self.sent if p.path != "/livez"]

    async def __call__(self, plan: ProbePlan) -> list[ProbeResult]:
        self.sent.append(plan)
        if self.hang and any(t in self.cut for t in plan.targets):
            await asyncio.sleep(5.0)  # dropped packets: the prober's whole budget
            return [ProbeResult(t, False, 5.0, ErrorKind.TIMEOUT, "timeout: no complete answer within 5s")
                    for t in plan.targets]
        return [ProbeResult(t, False, 0.01, ErrorKind.REFUSED, "connection refused") if t in self.cut else
                ProbeResult(t, plan.path != "/livez", 0.01, None, "ok", 200) for t in plan.targets]


def auto(prober: Prober, slices: Slices, access: ClusterAccess = OUTSIDE) -> tuple[PathChecker, Clock]:
    clock = Clock()
    return PathChecker("auto", access, slices, prober, None, clock), clock


async def test_outside_the_cluster_instances_that_answer_are_asked_each_by_address() -> None:
    prober = Prober()
    path, clock = auto(prober, Slices(A, B))
    results, fresh = await path.check("demo", PLAN, None, interval=10.0)
    assert fresh and [(r.instance, r.outcome) for r in results] == [(A, PathOutcome.PASSED), (B, PathOutcome.PASSED)]
    # /livez of each instance, verified as kubernetes.default.svc against the cluster CA
    assert {t for p in prober.livez() for t in p.targets} == {A, B} and len(prober.livez()) == 2
    assert {(p.server_name, p.ca_bundle, p.insecure_skip_tls_verify) for p in prober.livez()} == {
        ("kubernetes.default.svc", b"CA", False)}
    assert prober.discovery()[0].targets == (A, B)
    assert path.targets() == ((A, B), "kubernetes.default.svc", "instances")
    assert (await path.evidence({}, PLAN, results)).via == "instances"
    # no /livez per check, however long it runs
    for _ in range(5):
        clock.now += 10 * AUTO_RETRY_SECONDS
        await path.check("demo", PLAN, None, interval=10.0)
    assert len(prober.livez()) == 2 and len(prober.discovery()) == 6


async def test_one_instance_not_answering_from_here_falls_back_to_the_kubeconfig_server_and_says_why() -> None:
    prober = Prober(B)
    path, _ = auto(prober, Slices(A, B))
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert [r.instance for r in results] == [Target("127.0.0.1", 6443)]
    assert prober.discovery()[0].server_name == "127.0.0.1"
    via = (await path.evidence({}, PLAN, results)).via
    assert via == ("the kubeconfig's server https://127.0.0.1:6443: the instances in default/kubernetes do not "
                   "answer from here (10.250.0.3:6443: connection refused)")
    assert path.targets()[2] == via


async def test_falling_back_the_instances_are_tried_again_every_few_minutes_and_taken_once_they_answer() -> None:
    prober = Prober(B)
    path, clock = auto(prober, Slices(A, B))
    direct = [ProbeResult(EP, True, 0.01)]
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    path.settle("demo", results, direct)
    assert len(prober.livez()) == 2
    clock.now += AUTO_RETRY_SECONDS - 1
    await path.check("demo", PLAN, None, interval=10.0)
    assert len(prober.livez()) == 2  # not yet
    clock.now += 1
    await path.check("demo", PLAN, None, interval=10.0)
    assert len(prober.livez()) == 4 and path.targets()[0] == (Target("127.0.0.1", 6443),)  # still cut
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    path.settle("demo", results, direct)
    prober.cut.clear()  # the network heals
    clock.now += AUTO_RETRY_SECONDS
    # the last answer, from the kubeconfig's server, is recent and the endpoints say the same: still
    # it is not reused once the instances are chosen, it was about another route
    results, fresh = await path.check("demo", PLAN, direct, interval=10 * AUTO_RETRY_SECONDS)
    assert fresh and [r.instance for r in results] == [A, B]
    assert path.targets()[2] == "instances"


async def test_a_new_set_of_instances_is_asked_again() -> None:
    prober = Prober()
    slices = Slices(A)
    path, _ = auto(prober, slices)
    await path.check("demo", PLAN, None, interval=10.0)
    assert path.targets()[0] == (A,) and len(prober.livez()) == 1
    slices.instances.append(B)
    prober.cut.add(B)  # a new instance that is not reached from here
    await path.check("demo", PLAN, None, interval=10.0)
    assert len(prober.livez()) == 3
    assert path.targets()[0] == (Target("127.0.0.1", 6443),) and "10.250.0.3:6443" in path.targets()[2]


async def test_no_instances_listed_yet_asks_the_kubeconfig_server_until_they_are() -> None:
    prober = Prober()
    slices = Slices()
    path, _ = auto(prober, slices)
    await path.check("demo", PLAN, None, interval=10.0)
    assert path.targets()[2] == "the kubeconfig's server https://127.0.0.1:6443: default/kubernetes lists no instances"
    assert prober.livez() == []
    slices.instances.append(A)
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert [r.instance for r in results] == [A]


async def test_checks_starting_together_share_one_decision() -> None:
    prober = Prober()
    path, _ = auto(prober, Slices(A, B))
    await asyncio.gather(*(path.check(f"demo{i}", PLAN, None, interval=10.0) for i in range(50)))
    assert len(prober.livez()) == 2 and len(prober.discovery()) == 50


async def test_explain_asking_once_decides_too() -> None:
    prober = Prober(A)
    path, _ = auto(prober, Slices(A))
    results = await path.ask(PLAN)
    assert [r.instance for r in results] == [Target("127.0.0.1", 6443)]


@pytest.mark.looptime(start=0)
async def test_an_instance_whose_packets_are_dropped_is_waited_for_live_within_only() -> None:
    prober = Prober(B, hang=True)
    path, _ = auto(prober, Slices(A, B))
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    loop = asyncio.get_running_loop()
    assert loop.time() == pytest.approx(path.live_within)  # not the prober's 5 s budget
    assert [r.instance for r in results] == [Target("127.0.0.1", 6443)]
    assert "(10.250.0.3:6443: no answer to /livez within 2.5s)" in path.targets()[2]


async def test_a_retry_under_way_does_not_hold_other_checks() -> None:
    gate = asyncio.Event()
    prober = Prober(B)
    path, clock = auto(prober, Slices(A, B))
    await path.check("demo", PLAN, None, interval=10.0)
    real = prober.__call__

    async def slow(plan: ProbePlan) -> list[ProbeResult]:
        if plan.path == "/livez":
            await gate.wait()
        return await real(plan)

    path.probe = slow
    clock.now += AUTO_RETRY_SECONDS
    retrying = asyncio.ensure_future(path.check("first", PLAN, None, interval=10.0))
    await asyncio.sleep(0)
    results, _ = await asyncio.wait_for(path.check("other", PLAN, None, interval=10.0), 1.0)
    assert [r.instance for r in results] == [Target("127.0.0.1", 6443)]  # the kubeconfig's server meanwhile
    assert not retrying.done()
    gate.set()
    await retrying


async def test_in_the_cluster_auto_asks_the_instances_without_livez() -> None:
    prober = Prober()
    path, _ = auto(prober, Slices(A, B), INSIDE)
    results, _ = await path.check("demo", PLAN, None, interval=10.0)
    assert [r.instance for r in results] == [A, B] and prober.livez() == []
    assert path.targets()[2] == "instances"


async def test_kubeconfig_and_instances_modes_never_ask_livez_to_choose() -> None:
    for mode, instances in (("kubeconfig", (Target("127.0.0.1", 6443),)), ("instances", (A, B))):
        prober = Prober()
        path = PathChecker(mode, OUTSIDE, Slices(A, B), prober, None, Clock())
        await path.check("demo", PLAN, None, interval=10.0)
        assert prober.livez() == [] and prober.discovery()[0].targets == instances
        assert path.targets()[2] == ("instances" if mode == "instances"
                                     else "the kubeconfig's server https://127.0.0.1:6443")
