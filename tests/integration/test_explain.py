"""`kubectl apiservices explain NAME` against the real control plane: the session operator's trace,
fetched through kube-apiserver's service proxy as a user on a laptop would. Each case is pinned by
the behaviour the trace must show (which hop, what it met, the fix), not by a snapshot."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster import pki
from tests.cluster.controlplane import ControlPlane
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.integration.test_plugin_live import plugin_env
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
OURS_TIMEOUT = 30


def operator_behind_a_service(kube: Kube, namespace: str, port: int, address: str = "10.250.0.1") -> str:
    """A Service in front of an operator that runs as a local process: selector-less, with a hand-made
    EndpointSlice, as the suite registers every server. kube-apiserver's service proxy goes only to
    endpoints whose targetRef is a Pod with that address (isValidAddress in its service storage), and
    there is no kubelet here: a Pod object stands in, its status saying the process's address, as a
    kubelet would. Returns NAMESPACE/SERVICE:PORT."""
    name = f"op-{uuid.uuid4().hex[:4]}"
    kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "operator", "image": "apiservice-operator:stand-in"}]}})
    pod = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    pod["status"] = {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}
    kube.replace(f"/api/v1/namespaces/{namespace}/pods/{name}/status", pod)
    kube.create(Kube.service_path(namespace), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": port, "protocol": "TCP"}]}})
    kube.create(Kube.slice_path(namespace), {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": namespace, "name": name}}]})
    return f"{namespace}/{name}:http"


def explain(cp: ControlPlane, service: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cp.kubectl_path), "apiservices", "explain", name, "--operator-service", service,
                           *extra], env=plugin_env(cp), capture_output=True, text=True, timeout=60)


def explained(cp: ControlPlane, service: str, name: str) -> dict[str, Any]:
    """The JSON trace; the text one is printed too, for a reader of the test log."""
    done = explain(cp, service, name, "-o", "json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    text = explain(cp, service, name)
    assert text.returncode == 0, text.stderr
    print(f"\n$ kubectl apiservices explain {name}\n{text.stdout}")
    return report


@pytest.fixture
def via(kube: Kube, namespace: str, operator: OperatorProcess, operator_port: int) -> str:
    return operator_behind_a_service(kube, namespace, operator_port)


def test_explain_a_healthy_api_shows_every_hop_passing(
    aggregated_api: Callable[..., AggregatedAPI], control_plane: ControlPlane, via: str,
) -> None:
    api = aggregated_api(1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    report = explained(control_plane, via, api.name)
    (endpoint,) = report["endpoints"]
    assert endpoint["endpoint"] == f"{api.servers[0].address}:8443" and endpoint["ok"]
    assert endpoint["tls"] == f"verified against spec.caBundle for api.{api.namespace}.svc"
    assert endpoint["presented"][0]["subject"] == f"CN=api.{api.namespace}.svc"
    assert endpoint["tcpSeconds"] is not None and endpoint["httpStatus"] == 200
    assert [i["outcome"] for i in report["instances"]] == ["passed"]
    assert report["apiservice"]["caBundle"][0]["subject"] == "CN=aggregated-test-ca"
    assert report["endpointSlices"][0]["endpoints"][0]["ready"] is True
    assert (report["verdict"][0]["status"], report["verdict"][0]["reason"]) == ("True", "Passed")
    assert report["fix"] == "nothing to fix"
    text = explain(control_plane, via, api.name)
    assert text.returncode == 0 and "TCP connect" in text.stdout and "Fix: nothing to fix" in text.stdout


def test_explain_a_wrong_ca_shows_the_presented_certificate_and_why_it_fails(
    aggregated_api: Callable[..., AggregatedAPI], control_plane: ControlPlane, via: str,
) -> None:
    api = aggregated_api(1, serving_ca=pki.make_ca("not-the-cabundle-ca"))
    register_healthy(api)
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
    report = explained(control_plane, via, api.name)
    (endpoint,) = report["endpoints"]
    assert endpoint["presented"][0]["issuer"] == "CN=not-the-cabundle-ca", endpoint
    assert "certificate verify failed" in endpoint["tls"], endpoint
    assert report["verdict"][0]["reason"] == "FailedDiscoveryCheck"
    assert "spec.caBundle" in report["fix"]


def test_explain_a_hung_endpoint_names_the_timeout(
    aggregated_api: Callable[..., AggregatedAPI], control_plane: ControlPlane, via: str,
) -> None:
    api = aggregated_api(1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    api.set_state(mode="hang")
    report = explained(control_plane, via, api.name)
    (endpoint,) = report["endpoints"]
    assert not endpoint["ok"] and endpoint["detail"].startswith("timeout"), endpoint
    assert endpoint["tcpSeconds"] is not None  # it accepts; it never answers
    assert endpoint["tls"].startswith("handshake completed; no HTTP answer followed"), endpoint
    assert report["verdict"][0]["reason"] == "FailedDiscoveryCheck"
    assert "no request within the budget" in report["fix"]


def test_explain_says_plainly_when_the_apiservice_or_the_operator_is_not_there(
    control_plane: ControlPlane, via: str, kube: Kube, namespace: str,
) -> None:
    missing = explain(control_plane, via, "v1.nothing-here.example.com")
    assert missing.returncode == 1 and "handles no APIService named 'v1.nothing-here.example.com'" in missing.stderr
    nobody = operator_behind_a_service(kube, namespace, 1, address="10.250.0.199")
    unanswered = explain(control_plane, nobody, "v1.apps")
    assert unanswered.returncode == 1 and "no operator answers" in unanswered.stderr, unanswered.stderr
