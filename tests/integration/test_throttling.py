"""Nothing storms: kube-apiserver's API Priority and Fairness rejects every status write of the
operator (a FlowSchema matching its ServiceAccount's `patch` of `apiservices/status` only, a
priority level with no seats that rejects), 100 APIServices want their first verdict, and the
operator must keep its write requests under 5 a second while its probes go on, then land every
verdict within 30 s once the throttling ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import builders
from tests.cluster.controlplane import free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_for
from tests.cluster.operator import SA_NAME, SA_NAMESPACE, OperatorProcess
from tests.integration.test_operations import metric

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

N = 100
THROTTLED_FOR = 60.0
OURS = "apiservice-operator.io/Available"
FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def write_requests(text: str) -> float:
    return (metric(text, "apiservice_operator_status_writes_total") or 0) + (
        metric(text, "apiservice_operator_status_write_errors_total") or 0)


@pytest.fixture
def reject_status_writes(kube: Kube) -> Iterator[Callable[[], None]]:
    """APF: the operator's status patches only (its Lease, watches and probes are not matched) go to a
    priority level of zero seats that rejects with 429; the returned function ends it."""
    name = f"throttle-{uuid.uuid4().hex[:6]}"
    kube.create(f"{FLOWCONTROL}/prioritylevelconfigurations", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}})
    kube.create(f"{FLOWCONTROL}/flowschemas", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
        "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 50,
                 "distinguisherMethod": {"type": "ByUser"},
                 "rules": [{"subjects": [{"kind": "ServiceAccount",
                                          "serviceAccount": {"name": SA_NAME, "namespace": SA_NAMESPACE}}],
                            "resourceRules": [{"verbs": ["patch"], "apiGroups": ["apiregistration.k8s.io"],
                                               "resources": ["apiservices/status"], "clusterScope": True}]}]}})
    ended = False

    def end() -> None:
        nonlocal ended
        if not ended:
            ended = True
            kube.delete(f"{FLOWCONTROL}/flowschemas/{name}")
            kube.delete(f"{FLOWCONTROL}/prioritylevelconfigurations/{name}")

    yield end
    end()


def test_throttled_status_writes_stay_bounded_and_every_verdict_lands_after(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, operator_kubeconfig: Path, tmp_path: Path,
    reject_status_writes: Callable[[], None],
) -> None:
    api = aggregated_api(servers=1)
    api.register_service()
    api.write_slice()
    names = []
    for i in range(N):
        body = builders.make_apiservice(f"g{i}.{api.group}", "v1", service_namespace=api.namespace,
                                        service_name=api.service, ca_bundle=api.ca.cert_pem,
                                        labels={"ha-test": "throttle"})
        kube.create(Kube.apiservice_path(), body)
        names.append(body["metadata"]["name"])
    port = free_port("0.0.0.0")
    proc = OperatorProcess(operator_kubeconfig, tmp_path / "throttled.log", [
        "--metrics-port", str(port), "--selector", "ha-test=throttle"]).start()
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 60,
                 "the operator ready", interval=0.5, tolerate=(httpx.TransportError,))
        started = time.monotonic()
        first = scrape(port)
        time.sleep(THROTTLED_FOR)
        during = scrape(port)
        took = time.monotonic() - started
        sent = write_requests(during) - write_requests(first)
        refused = (metric(during, "apiservice_operator_status_write_errors_total") or 0)
        probes = (metric(during, "apiservice_operator_probes_total") or 0) - (
            metric(first, "apiservice_operator_probes_total") or 0)
        print(f"\nthrottled {took:.0f} s: {sent:.0f} write requests ({sent / took:.2f}/s), {refused:.0f} refused "
              f"in all, {probes:.0f} probes")
        assert refused >= 1, "kube-apiserver refused nothing: the FlowSchema did not match the operator's writes"
        assert sent / took <= 5, f"{sent / took:.1f} write requests a second while kube-apiserver refused them"
        assert probes >= N * THROTTLED_FOR / 20, f"only {probes:.0f} probes: they did not keep their pace"
        reject_status_writes()
        ended = time.monotonic()

        def written() -> int:
            return sum(1 for n in names if any(c.get("type") == OURS for c in
                                               (kube.apiservice(n).get("status") or {}).get("conditions") or []))

        wait_for(lambda: written() == N, 30, f"all {N} verdicts written within 30 s of the throttling's end",
                 interval=1)
        print(f"all {N} verdicts written {time.monotonic() - ended:.1f} s after the throttling ended")
        assert proc.alive()
    finally:
        code = proc.stop()
        print(f"\n===== throttled operator (exit {code}) =====\n{proc.logs()[-3000:]}")
        for n in names:
            kube.delete(Kube.apiservice_path(n))
