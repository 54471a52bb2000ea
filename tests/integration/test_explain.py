"""`kubectl apiservices explain NAME` against the real control plane: the session operator's trace,
fetched from its explain port (`--operator-url`: the operator runs as a process beside the tests;
on kind the plugin port-forwards to its Pod, e2e/). Each case is pinned by the behaviour the trace
must show (which hop, what it met, the fix), not by a snapshot. And who may ask: explain answers on
the loopback only, and kube-apiserver refuses a port-forward to a caller without the grant."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pki
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions
from tests.cluster.operator import OperatorProcess, service_account_kubeconfig
from tests.integration.test_plugin_live import plugin_env
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
OURS_TIMEOUT = 30


def explain(cp: ControlPlane, url: str, name: str, *extra: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--operator-url", url] if url else []
    return subprocess.run([str(cp.kubectl_path), "apiservices", "explain", name, *where, *extra],
                          env=env or plugin_env(cp), capture_output=True, text=True, timeout=60)


def explained(cp: ControlPlane, url: str, name: str) -> dict[str, Any]:
    """The JSON trace; the text one is printed too, for a reader of the test log."""
    done = explain(cp, url, name, "-o", "json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    text = explain(cp, url, name)
    assert text.returncode == 0, text.stderr
    print(f"\n$ kubectl apiservices explain {name}\n{text.stdout}")
    return report


@pytest.fixture
def via(operator: OperatorProcess, explain_port: int) -> str:
    return f"http://127.0.0.1:{explain_port}"


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


def test_explain_a_stale_discovery_shows_what_clients_read_and_the_servers_own_answers(
    aggregated_api: Callable[..., AggregatedAPI], control_plane: ControlPlane, via: str,
) -> None:
    api = aggregated_api(1)
    api.set_state(mode="healthy", apis="status", apis_status=503)
    register_healthy(api)
    wait_conditions(api, {OURS: ("False", "DiscoveryStale")}, 90)
    report = explained(control_plane, via, api.name)
    (view,) = report["clientsView"]
    assert view["freshness"] == "Stale", view
    answers = {d["document"]: d for d in report["serverDocuments"]}
    assert answers["/apis"]["status"] == 503 and not answers["/apis"]["serves"], answers
    assert answers["/openapi/v2"]["status"] == 200 and answers["/openapi/v3"]["status"] == 404, answers
    assert report["verdict"][0]["reason"] == "DiscoveryStale"
    assert "root /apis" in report["fix"]
    text = explain(control_plane, via, api.name).stdout
    assert "What clients read" in text and "discovery Stale" in text and "The server's own answers" in text, text


def test_explain_says_plainly_when_the_apiservice_or_the_operator_is_not_there(
    control_plane: ControlPlane, via: str, kube: Kube, namespace: str,
) -> None:
    missing = explain(control_plane, via, "v1.nothing-here.example.com")
    assert missing.returncode == 1 and "handles no APIService named 'v1.nothing-here.example.com'" in missing.stderr
    unanswered = explain(control_plane, f"http://127.0.0.1:{free_port('127.0.0.1')}", "v1.apps")
    assert unanswered.returncode == 1 and "no operator answers" in unanswered.stderr, unanswered.stderr


def test_explain_answers_on_the_loopback_only_and_not_on_the_metrics_port(
    operator: OperatorProcess, explain_port: int, operator_port: int,
) -> None:
    """Nothing beside the process, on any other address, gets a report: the explain port is bound to
    127.0.0.1, and the metrics port (every address, for Prometheus) has no /explain."""
    for address in ("10.250.0.1", "10.250.0.2"):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, explain_port)) != 0, f"explain answers on {address}"
    with urllib.request.urlopen(f"http://127.0.0.1:{operator_port}/metrics", timeout=5) as ok:
        assert ok.status == 200
    try:
        urllib.request.urlopen(f"http://10.250.0.1:{operator_port}/explain/v1.apps", timeout=5)
        raise AssertionError("the metrics port served /explain")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_a_caller_without_the_grant_is_refused_by_kube_apiserver(
    control_plane: ControlPlane, kube: Kube, namespace: str, tmp_path: Path,
) -> None:
    """The plugin reaches the operator through `kubectl port-forward`, which kube-apiserver authorizes
    (`create pods/portforward`): an authenticated user who may list the Pods but lacks that grant is
    refused by kube-apiserver itself, before anything reaches a Pod. Given the ClusterRole
    apiservice-operator-explain, the same user gets past RBAC (here to no kubelet: a stand-in Pod;
    on kind, e2e/, to the operator)."""
    pod = "apiservice-operator-stand-in"
    kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {"app.kubernetes.io/name": "apiservice-operator"}},
        "spec": {"containers": [{"name": "operator", "image": "apiservice-operator:stand-in"}]}})
    status = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
    status["status"] = {"phase": "Running", "podIP": "10.250.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}]}
    kube.replace(f"/api/v1/namespaces/{namespace}/pods/{pod}/status", status)
    user = f"oncall-{uuid.uuid4().hex[:6]}"
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": user}})
    kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": user},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
        "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}]})
    kubeconfig = service_account_kubeconfig(control_plane, tmp_path / "oncall.kubeconfig", namespace=namespace,
                                            name=user)
    env = {**plugin_env(control_plane), "KUBECONFIG": str(kubeconfig), "KUBECTL": str(control_plane.kubectl_path)}
    refused = explain(control_plane, "", "v1.apps", "--namespace", namespace, env=env)
    assert refused.returncode == 1, refused.stdout
    # kube-apiserver's own RBAC words, and the plugin's hint at the grant
    assert 'cannot create resource "pods/portforward"' in refused.stderr, refused.stderr
    assert "apiservice-operator-explain" in refused.stderr, refused.stderr
    kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": f"{user}-explain"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "apiservice-operator-explain"},
        "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}]})
    deadline = time.monotonic() + 15  # RBAC's caches take a moment to see the new binding
    while True:
        granted = explain(control_plane, "", "v1.apps", "--namespace", namespace, env=env)
        if "cannot create resource" not in granted.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert granted.returncode == 1 and "cannot create resource" not in granted.stderr, granted.stderr
