"""Recovery at kube-apiserver's pace (issue 26): kube-apiserver's own Available on an APIService is
news about its server. An operator whose periodic checks are ten minutes apart must still follow
kube-apiserver's verdict within seconds, both ways: nothing else tells it that the server stopped
(no Service or EndpointSlice moves), so only kube-apiserver's status write can."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cluster.controlplane import free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import condition, wait_conditions, wait_for
from tests.cluster.operator import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
KUBE_RECHECKS_WITHIN = 45  # kube-aggregator resyncs every APIService each 30 s
FOLLOWS_WITHIN = 10  # our check once kube-apiserver's write arrives: a probe budget and a write


def test_kube_apiservers_own_verdict_moving_makes_the_operator_look_at_once(
    aggregated_api: Callable[..., AggregatedAPI], operator_kubeconfig: Path, tmp_path: Path,
) -> None:
    api = aggregated_api(servers=1)
    api.register_service()
    api.write_slice()
    port = free_port("0.0.0.0")
    proc = OperatorProcess(operator_kubeconfig, tmp_path / "slow.log", [
        "--metrics-port", str(port), "--selector", "ha-test=kube-pace",
        "--probe-interval", "600", "--min-probe-interval", "600"]).start()
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 60,
                 "the operator ready", interval=0.5, tolerate=(httpx.TransportError,))
        api.register_apiservice(labels={"ha-test": "kube-pace"})
        wait_conditions(api, {OURS: ("True", "Passed"), "Available": ("True", "Passed")}, 60)
        api.stop()  # nothing the operator watches moves: only kube-apiserver's own re-check sees it
        wait_conditions(api, {"Available": ("False", "FailedDiscoveryCheck")}, KUBE_RECHECKS_WITHIN)
        seen = time.monotonic()
        wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, FOLLOWS_WITHIN)
        print(f"\nours False {time.monotonic() - seen:.1f} s after kube-apiserver's")
        for s in api.servers:
            s.start()
        wait_conditions(api, {"Available": ("True", "Passed")}, KUBE_RECHECKS_WITHIN)
        seen = time.monotonic()
        wait_conditions(api, {OURS: ("True", "Passed")}, FOLLOWS_WITHIN)
        print(f"ours True {time.monotonic() - seen:.1f} s after kube-apiserver's")
        assert condition(api.apiservice(), OURS) is not None
    finally:
        code = proc.stop()
        print(f"===== operator (exit {code}) =====\n{proc.logs()[-2000:]}")
