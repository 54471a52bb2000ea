"""Nothing storms: kube-apiserver's API Priority and Fairness rejects every status write of the
operator (a FlowSchema matching its ServiceAccount's `patch` of `apiservices/status` only, a
priority level with no seats that rejects), 100 APIServices want their first verdict, and the
operator must keep its write requests under 5 a second while its probes go on, then land every
verdict within 30 s once the throttling ends. And an Event that kube-apiserver refuses is filed once
it takes Events again."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import builders
from tests.cluster import apf
from tests.cluster.controlplane import free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.cluster.operator import SA_NAME, SA_NAMESPACE, OperatorProcess
from tests.integration.test_operations import events_of, metric
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

N = 100
THROTTLED_FOR = 60.0
OURS = "apiservice-operator.io/Available"


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def write_requests(text: str) -> float:
    return (metric(text, "apiservice_operator_status_writes_total") or 0) + (
        metric(text, "apiservice_operator_status_write_errors_total") or 0)


@pytest.fixture
def reject_status_writes(kube: Kube) -> Iterator[Callable[[], None]]:
    """APF: the operator's status patches only (its Lease, watches and probes are not matched) are
    rejected with 429; the returned function ends it."""
    _, end = apf.reject(kube, {"verbs": ["patch"], "apiGroups": ["apiregistration.k8s.io"],
                               "resources": ["apiservices/status"], "clusterScope": True})
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



@contextlib.contextmanager
def failing_event_writes(kube: Kube) -> Iterator[None]:
    """kube-apiserver answers the operator's Event writes with 500 while inside: a validating
    webhook for them (matched to its ServiceAccount by CEL) that cannot be reached, failurePolicy Fail.
    What a Kubernetes API in trouble answers, from kube-apiserver's own admission chain."""
    name = f"fail-events-{uuid.uuid4().hex[:6]}"
    path = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
    kube.create("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "fail.events.test.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 1,
            "clientConfig": {"url": f"https://127.0.0.1:{free_port('127.0.0.1')}/nobody-listens"},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["events"], "scope": "Namespaced"}],
            "matchConditions": [{"name": "the-operator", "expression":
                                 f"request.userInfo.username == 'system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}'"}],
        }]})
    as_operator = {"Impersonate-User": f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"}

    def refused() -> bool:
        probe = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "webhook-probe-"},
                 "involvedObject": {"kind": "Namespace", "name": "default"}, "reason": "Test", "message": "probe"}
        resp = kube.http.post("/api/v1/namespaces/default/events", json=probe, headers=as_operator)
        if resp.status_code < 300:
            kube.delete(f"/api/v1/namespaces/default/events/{resp.json()['metadata']['name']}")
        return resp.status_code >= 500

    try:
        wait_for(refused, 30, "kube-apiserver to refuse the operator's Event writes", interval=0.2)
        yield
    finally:
        kube.delete(path)


def test_an_event_the_api_refuses_is_filed_once_it_takes_them_again(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, operator: OperatorProcess, operator_port: int,
) -> None:
    """Events are best effort, but a lost one is what on-call misses: the operator tries again."""
    api = aggregated_api(1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, 30)
    with failing_event_writes(kube):
        api.stop()
        wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, 30)
        time.sleep(1.5)  # the operator's first try meets the refusal, and its retry after 1 s too
        assert not events_of(kube, api.name)
    events = wait_for(lambda: [e for e in events_of(kube, api.name) if e["reason"] == "FailedDiscoveryCheck"], 30,
                      "the refused Event filed once kube-apiserver takes Events again")
    assert events[0]["type"] == "Warning", events
    assert (metric(scrape(operator_port), "apiservice_operator_events_total", outcome="recorded") or 0) >= 1
