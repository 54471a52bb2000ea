"""A metrics API's consumers and its changes of hands, on the real control plane with the session
operator (as its ServiceAccount, so the RBAC to list HPAs is proven). There is no HPA controller
here: the test writes an HPA's ScalingActive condition as pkg/controller/podautoscaler writes it
(make e2e-kind sees the real one do it, with metrics-server)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pki
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.cluster.operator import OperatorProcess
from tests.integration.test_operations import metric, scrape

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
TIMEOUT = 40  # our check every few seconds while failing, and one HPA list every 10 s
FAILED = ("the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics "
          "for resource cpu: unable to fetch metrics from resource metrics API: the server is currently unable to "
          "handle the request (get pods.metrics.k8s.io)")


@pytest.fixture
def metrics_api(kube: Kube, namespace: str, test_ca: pki.KeyPair, tmp_path: Path) -> Iterator[AggregatedAPI]:
    """v1beta1.metrics.k8s.io served by one test server (its group named so; the server answers any)."""
    api = AggregatedAPI(kube, namespace, "metrics-server", "metrics.k8s.io", "v1beta1", tmp_path, test_ca)
    api.start_servers(1)
    api.register_service()
    api.write_slice()
    api.register_apiservice()
    yield api
    api.remove()


def stalled_hpa(kube: Kube, namespace: str, message: str = FAILED) -> str:
    name = f"web-{uuid.uuid4().hex[:5]}"
    path = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
    kube.create(path, {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": name},
                       "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                                "minReplicas": 1, "maxReplicas": 3,
                                "metrics": [{"type": "Resource", "resource": {
                                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}})
    obj = kube.get(f"{path}/{name}")
    obj["status"] = {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok",
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "message": message,
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    kube.replace(f"{path}/{name}/status", obj)
    return f"{namespace}/{name}"


def events_about(kube: Kube, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.get("/api/v1/namespaces/default/events")["items"]
            if e["involvedObject"].get("name") == name and e["reason"] == reason]


def test_a_failing_metrics_api_names_the_hpas_it_stalls_and_forgets_them_once_it_works(
    metrics_api: AggregatedAPI, operator: OperatorProcess, operator_port: int, kube: Kube, namespace: str,
) -> None:
    api = metrics_api
    wait_conditions(api, {OURS: ("True", "Passed")}, TIMEOUT)
    first = stalled_hpa(kube, namespace)
    stalled_hpa(kube, namespace, "the HPA was unable to compute the replica count: failed to get cpu utilization: "
                                 "missing request for cpu in container app of Pod web-1")  # no outage: not counted
    api.stop()
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, TIMEOUT,
                    messages={OURS: f"; stalling 1 HorizontalPodAutoscaler: {first}$"})
    assert metric(scrape(operator_port), "apiservice_operator_stalled_autoscalers", name=api.name) == 1
    second = stalled_hpa(kube, namespace)
    both = ", ".join(sorted([first, second]))
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, TIMEOUT,
                    messages={OURS: f"stalling 2 HorizontalPodAutoscalers: {both}$"})
    events = wait_for(lambda: events_about(kube, api.name, "StallingAutoscalers"), TIMEOUT, "the Event")
    assert events[0]["type"] == "Warning" and both in events[0]["message"]
    for s in api.servers:
        s.start()
    found = wait_conditions(api, {OURS: ("True", "Passed")}, TIMEOUT)
    assert "stalling" not in found[OURS]["message"]
    assert metric(scrape(operator_port), "apiservice_operator_stalled_autoscalers", name=api.name) == 0


def test_a_takeover_of_the_metrics_apiservice_is_a_warning_naming_both_backends_and_the_manager(
    metrics_api: AggregatedAPI, operator: OperatorProcess, kube: Kube, namespace: str,
) -> None:
    api = metrics_api
    wait_conditions(api, {OURS: ("True", "Passed")}, TIMEOUT)
    # a rotated caBundle alone is no change of hands (cert-manager's cainjector does it routinely)
    rotated = base64.b64encode(pki.make_ca("rotated").cert_pem).decode()
    kube.merge_patch(Kube.apiservice_path(api.name), {"spec": {"caBundle": rotated}})
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, TIMEOUT)
    body = api.apiservice()
    spec = {k: body["spec"][k] for k in ("group", "version", "groupPriorityMinimum", "versionPriority", "caBundle")}
    spec["service"] = {"namespace": namespace, "name": "keda-operator-metrics-apiserver", "port": 443}
    kube.apply(Kube.apiservice_path(api.name), {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                                                "metadata": {"name": api.name}, "spec": spec}, manager="keda-operator")
    events = wait_for(lambda: events_about(kube, api.name, "BackendChanged"), TIMEOUT, "the Event")
    assert len(events) == 1 and events[0]["type"] == "Warning", events
    message = events[0]["message"]
    assert (f"moved from Service {namespace}/metrics-server:443 to Service {namespace}/keda-operator-metrics-apiserver"
            f":443 by keda-operator (Apply") in message, message
    assert "Only one backend can serve metrics.k8s.io" in message
    wait_conditions(api, {OURS: ("False", "ServiceNotFound")}, TIMEOUT)
