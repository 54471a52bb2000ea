"""Operating it: metrics, Events, health, leader election and failover, cleanup, missing RBAC."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.controlplane import REPO, ControlPlane, free_port
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, condition, wait_conditions, wait_for
from tests.cluster.operator import SA_NAMESPACE, OperatorProcess, service_account_kubeconfig
from tests.integration.test_scenarios import OURS, OURS_DEGRADED, OURS_TIMEOUT, register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def metric(text: str, metric_name: str, /, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(metric_name + "{") and not line.startswith(metric_name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def events_of(kube: Kube, name: str) -> list[dict[str, Any]]:
    items = kube.get("/api/v1/namespaces/default/events",
                     fieldSelector=f"involvedObject.name={name},involvedObject.kind=APIService")["items"]
    return sorted(items, key=lambda e: e["firstTimestamp"])


def test_metrics_show_an_outage(aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess,
                                operator_port: int) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    wait_for(lambda: metric(scrape(operator_port), "apiservice_operator_unavailable_apiservice", name=api.name) == 0,
             10, "gauge 0 while available")
    api.stop()
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
    text = wait_for(lambda: (t := scrape(operator_port)) and metric(
        t, "apiservice_operator_unavailable_apiservice", name=api.name) == 1 and t, 10, "gauge 1")
    assert metric(text, "apiservice_operator_transitions_total", name=api.name, type=OURS,
                  status="False", reason="FailedDiscoveryCheck") == 1
    assert (metric(text, "apiservice_operator_probe_errors_total", kind="refused") or 0) >= 1
    assert (metric(text, "apiservice_operator_discovery_duration_seconds_count", name=api.name) or 0) >= 2
    assert metric(text, "apiservice_operator_queue_depth") is not None
    # the first sweep began before anything was known and is not timed: the gauge is set when the
    # second ends, which an operator started moments before this test may not have reached yet
    swept = wait_for(lambda: (metric(scrape(operator_port), "apiservice_operator_last_sweep_timestamp_seconds")
                              or 0) > time.time() - 60, 30, "a sweep completed within the last minute")
    assert swept
    print(f"\n--- /metrics after the transition of {api.name} ---\n" + "\n".join(
        line for line in text.splitlines() if api.name in line or "probe_errors" in line or "sweep" in line
        or "queue_depth" in line or "status_writes" in line))


def test_events_of_an_outage_and_its_recovery(aggregated_api: Callable[..., AggregatedAPI],
                                              operator: OperatorProcess, kube: Kube) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    api.set_state(mode="status", status=503)
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
    api.set_state(mode="healthy")
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    events = wait_for(lambda: (e := events_of(kube, api.name)) and len(e) >= 2 and e, 10, "two events")
    seen = [(e["type"], e["reason"]) for e in events]
    # the first Passed is no news (an operator restarted beside many APIServices would post one each)
    assert seen == [("Warning", "FailedDiscoveryCheck"), ("Normal", "Recovered")], seen
    assert "bad status: 503" in str(events[0]["message"])
    assert all(e["source"]["component"] == "apiservice-operator" for e in events)
    print(f"\n--- events of {api.name} ---\n" + "\n".join(
        f"{e['type']:8} {e['reason']:22} count={e['count']} {e['message']}" for e in events))


def test_flapping_server_aggregates_events_instead_of_flooding(
    aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess, kube: Kube
) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    for _ in range(4):
        api.set_state(mode="status", status=500)
        wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
        api.set_state(mode="healthy")
        wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    events = wait_for(lambda: (e := events_of(kube, api.name)) and any(
        x["reason"] == "Recovered" and x["count"] == 4 for x in e) and e, 10, "aggregated counts")
    by_reason = {e["reason"]: e["count"] for e in events}
    assert len(events) == 2, [(e["reason"], e["count"]) for e in events]  # a first Passed makes none
    assert by_reason == {"FailedDiscoveryCheck": 4, "Recovered": 4}


def test_health_endpoints(operator: OperatorProcess, operator_port: int) -> None:
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{operator_port}/readyz", timeout=5).status_code == 200, 30,
             "ready")
    ready = httpx.get(f"http://127.0.0.1:{operator_port}/readyz", timeout=5).json()
    assert ready == {"synced": True, "role": "single", "problems": {}}
    assert httpx.get(f"http://127.0.0.1:{operator_port}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{operator_port}/", timeout=5).status_code == 404


@pytest.fixture
def ha_pair(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[list[tuple[OperatorProcess, int]]]:
    pair = []
    for identity in ("replica-a", "replica-b"):
        port = free_port("0.0.0.0")
        proc = OperatorProcess(operator_kubeconfig, tmp_path / f"{identity}.log", [
            "--probe-interval", "2", "--metrics-port", str(port), "--selector", "ha-test",
            "--leader-election", "true", "--lease-namespace", SA_NAMESPACE, "--lease-duration", "6",
            "--identity", identity])
        pair.append((proc.start(), port))
    yield pair
    for proc, _ in pair:
        code = proc.stop()
        print(f"\n===== {proc.log_path.name} (exit {code}) =====\n{proc.logs()[-3000:]}")


def test_only_the_leader_writes_and_a_standby_takes_over_after_kill_9(
    aggregated_api: Callable[..., AggregatedAPI], ha_pair: list[tuple[OperatorProcess, int]], kube: Kube
) -> None:
    api = aggregated_api(servers=1)
    api.register_service()
    api.write_slice()
    api.register_apiservice(labels={"ha-test": "yes"})
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{SA_NAMESPACE}/leases/apiservice-operator"
    holder = wait_for(lambda: (kube.get_or_none(lease_path) or {}).get("spec", {}).get("holderIdentity"), 30,
                      "a leader")
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    leader, standby = (ha_pair[0], ha_pair[1]) if holder == "replica-a" else (ha_pair[1], ha_pair[0])
    for (_, port), role in ((leader, "leader"), (standby, "standby")):
        def is_ready(url: str = f"http://127.0.0.1:{port}/readyz") -> Any:
            response = httpx.get(url, timeout=5)
            return response.status_code == 200 and response.json()

        # the standby may still be starting (its port not yet open) when the leader has written
        ready = wait_for(is_ready, 30, f"{role} ready", tolerate=(httpx.TransportError,))
        assert ready["role"] == role
    standby_metrics = scrape(standby[1])
    assert metric(standby_metrics, "apiservice_operator_status_writes_total") == 0
    assert metric(standby_metrics, "apiservice_operator_probes_total") == 0
    assert metric(scrape(leader[1]), "apiservice_operator_status_writes_total") == 1

    assert leader[0].popen is not None
    leader[0].popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    new_holder = wait_for(lambda: (h := kube.get(lease_path)["spec"].get("holderIdentity")) != holder and h, 60,
                          "the standby to take the Lease")
    failover = time.monotonic() - killed
    # the new leader does the work: break the server, the verdict follows
    api.stop()
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
    detected = time.monotonic() - killed
    print(f"\nfailover: leader {holder} killed -9; {new_holder} took the Lease after {failover:.1f} s; "
          f"a new outage was written {detected:.1f} s after the kill (lease duration 6 s)")
    assert (metric(scrape(standby[1]), "apiservice_operator_status_writes_total") or 0) >= 1


def test_clean_shutdown_hands_the_lease_over_at_once(
    aggregated_api: Callable[..., AggregatedAPI], ha_pair: list[tuple[OperatorProcess, int]], kube: Kube
) -> None:
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{SA_NAMESPACE}/leases/apiservice-operator"
    holder = wait_for(lambda: (kube.get_or_none(lease_path) or {}).get("spec", {}).get("holderIdentity"), 30,
                      "a leader")
    leader = ha_pair[0][0] if holder == "replica-a" else ha_pair[1][0]
    stopped = time.monotonic()
    assert leader.stop() == 0
    took = time.monotonic() - stopped
    assert took < 5, f"SIGTERM took {took:.1f} s"
    wait_for(lambda: kube.get(lease_path)["spec"].get("holderIdentity") not in (holder, "", None), 10,
             "the standby to take the released Lease well before it would expire")


def test_cleanup_removes_only_our_conditions(
    aggregated_api: Callable[..., AggregatedAPI], operator_kubeconfig: Path, control_plane: ControlPlane,
    tmp_path: Path, operator: OperatorProcess,
) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    other = "cleanup-test.example.com"
    proc = OperatorProcess(operator_kubeconfig, tmp_path / "prefixed.log",
                           ["--condition-prefix", other, "--metrics-port", "0"]).start()
    try:
        wait_for(lambda: condition(api.apiservice(), f"{other}/Available"), OURS_TIMEOUT, "prefixed conditions")
    finally:
        proc.stop()
    wait_conditions(api, {OURS: ("True", "Passed"), "Available": ("True", "Passed")}, 120)
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "apiservice_operator", "cleanup", "--kubeconfig", str(operator_kubeconfig),
         "--condition-prefix", other],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO / "operator")})
    assert result.returncode == 0, result.stderr
    assert "removed our conditions from" in result.stderr
    types = {c["type"] for c in api.apiservice()["status"]["conditions"]}
    assert types == {"Available", OURS, OURS_DEGRADED}


def test_missing_permission_is_named_and_keeps_the_operator_unready(
    control_plane: ControlPlane, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    """The shipped ClusterRole minus the EndpointSlice rule, bound to another ServiceAccount."""
    rbac = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
    role = next(d for d in rbac if d["kind"] == "ClusterRole")
    role["metadata"]["name"] = "apiservice-operator-limited"
    role["rules"] = [r for r in role["rules"] if "endpointslices" not in r["resources"]]
    docs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "limited", "namespace": SA_NAMESPACE}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "apiservice-operator-limited"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "apiservice-operator-limited"},
         "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": SA_NAMESPACE}]},
    ]
    control_plane.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))
    kubeconfig = service_account_kubeconfig(control_plane, tmp_path / "limited.kubeconfig", name="limited")
    port = free_port("0.0.0.0")
    proc = OperatorProcess(kubeconfig, tmp_path / "limited.log", ["--metrics-port", str(port)]).start()
    try:
        logs = proc.wait_for_log("missing permission: verb=list resource=endpointslices.discovery.k8s.io", 30)
        assert "verb=watch resource=endpointslices.discovery.k8s.io" in logs
        ready = wait_for(lambda: (r := httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)).status_code == 503
                         and r.json(), 10, "not ready")
        assert "endpointslices" in ready["problems"]["rbac"]
        assert proc.alive()
    finally:
        proc.stop()
