"""`--path-probe auto` outside the cluster (the operator runs from a kubeconfig here) on the local
control planes, whose instances in default/kubernetes answer from where the operator runs: `auto`
asks each instance by address, as `instances` does, so one instance cut from a server is seen; where
an instance does not answer from here, it asks the kubeconfig's server and the message says why.

The APIServices are labelled ha-test: the session operator (selector !ha-test) leaves them to ours."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import wait_conditions
from tests.cluster.multiplane import Cut, MultiControlPlane, iptables
from tests.cluster.operator import OperatorProcess, service_account_kubeconfig

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS, OURS_DEGRADED, THEIRS = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", "Available"
# a first check, a path probe's 5 s budget where an instance is cut, the probe interval (2 s), /livez
OURS_TIMEOUT = 45
THROUGH_INSTANCES = "path probe (auto): through each kube-apiserver instance"
THROUGH_KUBECONFIG = "path probe (auto): through the kubeconfig's server"


def _dotted(address: str) -> str:
    return re.escape(address)


def register(api: AggregatedAPI, label: str) -> None:
    api.register_service()
    api.write_slice()
    api.register_apiservice(labels={"ha-test": label})


def auto_operator(kubeconfig: Path, log: Path, label: str) -> OperatorProcess:
    return OperatorProcess(kubeconfig, log, [
        "--probe-interval", "2", "--metrics-port", "0", "--path-probe", "auto", "--selector", f"ha-test={label}",
        "--log-level", "DEBUG"]).start()


def stop(proc: OperatorProcess, request: pytest.FixtureRequest, failed_before: int, label: str) -> None:
    code = proc.stop()
    if request.session.testsfailed > failed_before or code not in (0, None):
        print(f"\n===== {label} operator log (exit {code}) =====\n{proc.logs()[-20000:]}")


@pytest.fixture
def session_auto_operator(operator_kubeconfig: Path, tmp_path: Path,
                          request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    proc = auto_operator(operator_kubeconfig, tmp_path / "auto.log", "path-auto")
    failed_before = request.session.testsfailed
    yield proc
    stop(proc, request, failed_before, "auto (session plane)")


def test_auto_on_the_local_plane_asks_its_instance_by_address(
    aggregated_api: Callable[..., AggregatedAPI], session_auto_operator: OperatorProcess,
) -> None:
    """The session plane's one kube-apiserver is listed at 10.250.0.1, which answers from here: the
    evidence is per instance (`instances`' wording), not the kubeconfig's server 127.0.0.1."""
    api = aggregated_api(1)
    register(api, "path-auto")
    passed = "discovery passed through 1/1 kube-apiserver instances and on 1/1 endpoints"
    found = wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT, messages={OURS: passed})
    assert "kubeconfig" not in found[OURS]["message"], found
    logs = session_auto_operator.wait_for_log(f"{THROUGH_INSTANCES} (1 answer /livez from here)")
    assert THROUGH_KUBECONFIG not in logs


@pytest.fixture(scope="module")
def two_planes_auto_operator(two_apiservers: MultiControlPlane, tmp_path_factory: pytest.TempPathFactory,
                             request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("auto-operator")
    kubeconfig = service_account_kubeconfig(two_apiservers, work / "sa.kubeconfig")
    proc = auto_operator(kubeconfig, work / "operator.log", "path-auto-two")
    failed_before = request.session.testsfailed
    yield proc
    stop(proc, request, failed_before, "auto (two instances)")


def test_auto_sees_one_instance_cut_from_the_server(
    two_apiservers_aggregated_api: Callable[..., AggregatedAPI], two_apiservers: MultiControlPlane,
    two_planes_auto_operator: OperatorProcess,
) -> None:
    """The issue: with the kubeconfig's server alone (instance 0), an instance cut from the server
    went unseen. `auto` asks both, as `instances` does, and names the one cut."""
    api = two_apiservers_aggregated_api(1)
    register(api, "path-auto-two")
    # each instance lists itself in default/kubernetes on its own lease reconcile: the second may
    # come seconds after the first (a new set of instances: `auto` asks their /livez again)
    wait_conditions(api, {OURS: ("True", "Passed"), THEIRS: ("True", "Passed")}, OURS_TIMEOUT,
                    messages={OURS: "through 2/2 kube-apiserver instances"})
    two_planes_auto_operator.wait_for_log(f"{THROUGH_INSTANCES} (2 answer /livez from here)")
    server = api.servers[0]
    cut_address = two_apiservers.addresses[1]
    with two_apiservers.cut(1, server.address, server.port):
        found = wait_conditions(api, {OURS: ("True", "Passed"), OURS_DEGRADED: ("True", "InstanceUnreachable")},
                                OURS_TIMEOUT, messages={OURS_DEGRADED: rf"{_dotted(cut_address)}:\d+: "})
        assert "through 1/2 kube-apiserver instances" in found[OURS]["message"], found
        assert two_apiservers.addresses[0] not in found[OURS_DEGRADED]["message"], found


def test_auto_asks_the_kubeconfig_server_where_an_instance_does_not_answer_from_here_and_says_why(
    two_apiservers_aggregated_api: Callable[..., AggregatedAPI], two_apiservers: MultiControlPlane,
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    """Instance 1 refuses the operator's own connections (this process's uid, as the operator runs
    as it; kube-apiserver's instances run as their own uids and are not cut): the operator falls
    back to its kubeconfig's server (instance 0) and the Passed message names why."""
    api = two_apiservers_aggregated_api(1)
    register(api, "path-auto-fallback")
    kept, cut_address = two_apiservers.addresses
    rule = ["-d", cut_address, "-p", "tcp", "--dport", str(two_apiservers.port), "-m", "owner",
            "--uid-owner", str(os.geteuid()), "-j", "REJECT", "--reject-with", "tcp-reset"]
    kubeconfig = service_account_kubeconfig(two_apiservers, tmp_path / "sa.kubeconfig")
    with Cut(iptables(), [rule]).apply():
        proc = auto_operator(kubeconfig, tmp_path / "operator.log", "path-auto-fallback")
        failed_before = request.session.testsfailed
        try:
            t0 = time.monotonic()
            found = wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT, messages={OURS: (
                rf"discovery passed through 1/1 kube-apiserver \(the kubeconfig's server "
                rf"https://{_dotted(kept)}:\d+: the instances in default/kubernetes do not answer from here "
                rf"\({_dotted(cut_address)}:\d+: connection refused\)\)")})
            print(f"\n[path auto] fell back after {time.monotonic() - t0:.1f}s: {found[OURS]['message']}")
            proc.wait_for_log(THROUGH_KUBECONFIG)
        finally:
            stop(proc, request, failed_before, "auto (fallback)")
