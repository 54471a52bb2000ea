"""The operator as it is deployed: the Deployment from manifests/ on a cluster with nodes (make e2e-kind).
Two replicas Ready through their probes, non-root on a read-only root filesystem, only the Lease holder
probing and writing, and failover when the leader goes. Skipped on the local control plane (no kubelet).

Measurements go to stdout and, when E2E_REPORT is set, as JSON lines to that file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests import builders
from tests.cluster.kube import Kube, condition, wait_conditions, wait_for

from e2e.backends import Backend

NAMESPACE = "apiservice-operator"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/apiservice-operator"
OURS = "apiservice-operator.io/Available"
Cluster = tuple[Kube, Path, Any]


def report(name: str, **values: Any) -> None:
    line = json.dumps({"measurement": name, **values})
    print(line)
    if path := os.environ.get("E2E_REPORT"):
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, has_nodes: bool) -> Iterator[Kube]:
    if not has_nodes:
        pytest.skip("no nodes: the Deployment runs only on a cluster with a kubelet (make e2e-kind)")
    kube = cluster[0]
    if kube.get_or_none(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/apiservice-operator") is None:
        pytest.skip("the operator's Deployment is not applied (kubectl apply -k manifests/)")
    yield kube


def kubectl(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.environ.get("KUBECTL", "kubectl"), f"--kubeconfig={cluster[1]}", *args],
                          capture_output=True, text=True, check=check, timeout=120)


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    items = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                     labelSelector="app.kubernetes.io/name=apiservice-operator")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def two_ready(kube: Kube) -> list[dict[str, Any]] | None:
    pods = operator_pods(kube)
    return pods if len(pods) == 2 and all(ready(p) for p in pods) else None


def holder(kube: Kube) -> str:
    lease = kube.get_or_none(LEASE)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def metrics(kube: Kube, pod: str) -> dict[str, float]:
    """The pod's /metrics through kube-apiserver's pod proxy: unlabelled samples by name."""
    resp = kube.http.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:8080/proxy/metrics")
    resp.raise_for_status()
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def test_both_replicas_ready_non_root_read_only(deployed: Kube, cluster: Cluster) -> None:
    pods = wait_for(lambda: two_ready(deployed), 180, "two Ready operator pods", interval=1)
    for pod in pods:
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        report("security-context", pod=name, pod_security_context=spec.get("securityContext"),
               container_security_context=container.get("securityContext"))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        # as running, not only as declared: the process's ids, and a write to / refused
        probe = ("import os, errno\n"
                 "try:\n    open('/e2e-write-test', 'w')\n    ro = False\n"
                 "except OSError as e:\n    ro = e.errno == errno.EROFS\n"
                 "print(os.getuid(), os.getgid(), ro, open('/proc/1/status').read().split('CapEff:')[1].split()[0])")
        out = kubectl(cluster, "exec", "-n", NAMESPACE, name, "--", "python3", "-c", probe).stdout.split()
        report("running-as", pod=name, uid=int(out[0]), gid=int(out[1]), root_fs_read_only=out[2] == "True",
               pid1_effective_caps=out[3])
        assert int(out[0]) == 65532 and int(out[1]) == 65532
        assert out[2] == "True", "the root filesystem accepted a write"
        assert int(out[3], 16) == 0, "capabilities left after drop: ALL"


def test_only_the_leader_probes_and_writes(deployed: Kube, namespace: str) -> None:
    pods = wait_for(lambda: two_ready(deployed), 180, "two Ready operator pods", interval=1)
    names = sorted(p["metadata"]["name"] for p in pods)
    leader = wait_for(lambda: holder(deployed) in names and holder(deployed), 60, "a Lease holder")
    # something to write about: an APIService whose Service does not exist
    group = f"{namespace}.e2e.example.com"
    body = builders.make_apiservice(group, service_namespace=namespace, service_name="missing")
    deployed.create(Kube.apiservice_path(), body)
    try:
        wait_for(lambda: condition(deployed.apiservice(body["metadata"]["name"]), OURS), 60, "our condition")
        samples = {n: metrics(deployed, n) for n in names}
    finally:
        deployed.delete(Kube.apiservice_path(body["metadata"]["name"]))
    roles = {n: {"leader_metric": s.get("apiservice_operator_leader"),
                 "status_writes": s.get("apiservice_operator_status_writes_total"),
                 "probes": s.get("apiservice_operator_probes_total")} for n, s in samples.items()}
    report("roles", lease_holder=leader, pods=roles)
    standby = next(n for n in names if n != leader)
    assert roles[leader]["leader_metric"] == 1 and roles[standby]["leader_metric"] == 0
    assert (roles[leader]["status_writes"] or 0) > 0
    assert not roles[standby]["status_writes"] and not roles[standby]["probes"]


def crash(cluster: Cluster, pod: dict[str, Any]) -> None:
    """The leader's node is lost: SIGKILL its operator process on the kind node (docker exec), so the
    Lease is not released, and force-delete the Pod so that it does not come back under the same
    identity (a container restarted in place reclaims its own Lease at once)."""
    node = os.environ["E2E_KIND_NODE"]
    ids = subprocess.run(["docker", "exec", node, "crictl", "ps", "-q", "--name", "operator",
                          "--label", f"io.kubernetes.pod.name={pod['metadata']['name']}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, ids
    info = json.loads(subprocess.run(["docker", "exec", node, "crictl", "inspect", ids[0]],
                                     capture_output=True, text=True, check=True).stdout)
    subprocess.run(["docker", "exec", node, "kill", "-9", str(info["info"]["pid"])], check=True)
    kubectl(cluster, "delete", "pod", "-n", NAMESPACE, pod["metadata"]["name"], "--grace-period=0", "--force",
            "--wait=false")


@pytest.mark.parametrize("how", ["delete-pod", "crash"])
def test_failover(how: str, deployed: Kube, cluster: Cluster, namespace: str) -> None:
    """Time from the leader's end until the other replica holds the Lease, and until a change made at
    that moment is written by it. delete-pod: SIGTERM, the leader hands the Lease over; crash: SIGKILL
    and the Pod gone, the Lease has to expire (--lease-duration 15 s)."""
    if how == "crash" and not os.environ.get("E2E_KIND_NODE"):
        pytest.skip("crash needs the node's container runtime (E2E_KIND_NODE, set by make e2e-kind)")
    pods = wait_for(lambda: two_ready(deployed), 180, "two Ready operator pods", interval=1)
    names = [p["metadata"]["name"] for p in pods]
    old = wait_for(lambda: holder(deployed) in names and holder(deployed), 60, "a Lease holder")
    old_pod = next(p for p in pods if p["metadata"]["name"] == old)
    body = builders.make_apiservice(f"{namespace}-{uuid.uuid4().hex[:4]}.failover.example.com",
                                    service_namespace=namespace, service_name="missing")
    name = body["metadata"]["name"]
    t0 = time.monotonic()
    if how == "delete-pod":
        kubectl(cluster, "delete", "pod", "-n", NAMESPACE, old, "--wait=false")
    else:
        crash(cluster, old_pod)
    deployed.create(Kube.apiservice_path(), body)  # a change that only a live leader can write
    try:
        new = wait_for(lambda: (h := holder(deployed)) and h != old and h, 120, "a new Lease holder")
        t_lease = time.monotonic() - t0
        verdict = wait_for(lambda: condition(deployed.apiservice(name), OURS), 120, "the new leader's write")
        t_write = time.monotonic() - t0
    finally:
        deployed.delete(Kube.apiservice_path(name))
    report("failover", how=how, old_leader=old, new_leader=new, lease_taken_after_s=round(t_lease, 2),
           first_write_after_s=round(t_write, 2), reason=verdict.get("reason"))
    assert verdict["reason"] == "ServiceNotFound"
    # the Deployment heals: two Ready replicas again (a crashed container restarts in place)
    wait_for(lambda: two_ready(deployed), 180, "two Ready operator pods again", interval=1)


def node_iptables(*args: str) -> None:
    subprocess.run(["docker", "exec", os.environ["E2E_KIND_NODE"], "iptables", *args], check=True,
                   capture_output=True, text=True, timeout=30)


def test_control_plane_cut_from_the_pods_names_the_hop(deployed: Kube, backend: Backend, namespace: str) -> None:
    """The most reported outage in the field (security groups, firewalls, NetworkPolicy): the control
    plane cannot reach the server's Pods, which still answer inside the cluster. On the node an OUTPUT
    rule cuts kube-apiserver (a host-network process) from the Pod, while Pod-to-Pod traffic (FORWARD),
    the operator's own probe among it, still passes (DESIGN 9)."""
    if not os.environ.get("E2E_KIND_NODE"):
        pytest.skip("needs the kind node's iptables (E2E_KIND_NODE, set by make e2e-kind)")
    api = backend.create(namespace, f"{namespace}.cut.e2e.example.com", 1)
    wait_conditions(api, {OURS: ("True", "Passed"), "Available": ("True", "Passed")}, 120)
    pod_ip = deployed.get(f"/api/v1/namespaces/{namespace}/pods/api-0")["status"]["podIP"]
    rule = ["OUTPUT", "-d", pod_ip, "-p", "tcp", "--dport", "8443", "-j", "DROP"]
    node_iptables("-I", *rule)
    t0 = time.monotonic()
    try:
        found = wait_conditions(api, {OURS: ("False", "ControlPlaneUnreachable")}, 120,
                                messages={OURS: "Allow traffic from the control plane"})
        took = time.monotonic() - t0
        theirs = condition(api.apiservice(), "Available") or {}
        report("control-plane-cut", ours_after_s=round(took, 2), ours=found[OURS]["message"][:300],
               theirs=f"{theirs.get('status')}/{theirs.get('reason')}: {theirs.get('message', '')[:200]}")
    finally:
        node_iptables("-D", *rule)
    t1 = time.monotonic()
    wait_conditions(api, {OURS: ("True", "Passed"), "Available": ("True", "Passed")}, 120)
    report("control-plane-restored", ours_after_s=round(time.monotonic() - t1, 2))


def test_an_unavailable_api_holds_up_namespace_deletion_and_says_which(
    deployed: Kube, backend: Backend, namespace: str,
) -> None:
    """The real namespace controller cannot delete a namespace while discovery is incomplete
    (NamespaceDeletionDiscoveryFailure); our message and gauge say which deletions an outage holds up."""
    api = backend.create(namespace, f"{namespace}.blast.e2e.example.com", 1)
    wait_conditions(api, {OURS: ("True", "Passed")}, 120)
    api.stop(0)
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, 120)
    victim = f"{namespace}-victim"
    deployed.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": victim}})
    deployed.create(f"/api/v1/namespaces/{victim}/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"k": "v"}})
    t0 = time.monotonic()
    deployed.delete(f"/api/v1/namespaces/{victim}")
    found = wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, 180,
                            messages={OURS: f"blocking deletion of 1 namespace: {victim}"})
    report("blast-radius", seen_after_s=round(time.monotonic() - t0, 2), message=found[OURS]["message"][-160:])
    api.start(0)
    t1 = time.monotonic()
    found = wait_conditions(api, {OURS: ("True", "Passed")}, 120)
    assert "blocking" not in found[OURS]["message"]
    wait_for(lambda: deployed.get_or_none(f"/api/v1/namespaces/{victim}") is None, 600,
             f"namespace {victim} deleted once discovery works", interval=2)
    report("blast-radius-cleared", namespace_gone_after_s=round(time.monotonic() - t1, 2))


def user_kubeconfig(cluster: Cluster, namespace: str, name: str, target: Path) -> Path:
    """A kubeconfig of a ServiceAccount `name` in `namespace`: an on-call user who is not an admin."""
    config = yaml.safe_load(cluster[1].read_text())
    token = kubectl(cluster, "create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    config["users"] = [{"name": name, "user": {"token": token}}]
    config["contexts"] = [{"name": name, "context": {"cluster": context["cluster"], "user": name}}]
    config["current-context"] = name
    target.write_text(yaml.safe_dump(config))
    return target


def test_explain_works_for_an_authorized_user_through_a_port_forward_and_refuses_others(
    deployed: Kube, cluster: Cluster, backend: Backend, namespace: str, tmp_path: Path,
) -> None:
    """`kubectl apiservices explain` as on-call runs it: a port-forward to an operator Pod's loopback,
    authorized by kube-apiserver. With the ClusterRole apiservice-operator-explain bound in the
    operator's namespace the report comes back; without it kube-apiserver refuses the forward."""
    api = backend.create(namespace, f"{namespace}.explain.e2e.example.com", 1)
    wait_conditions(api, {OURS: ("True", "Passed")}, 120)
    user = f"oncall-{uuid.uuid4().hex[:6]}"
    kubectl(cluster, "create", "serviceaccount", user, "-n", namespace)
    config = user_kubeconfig(cluster, namespace, user, tmp_path / "oncall.kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(config)}
    command = [sys.executable, "-m", "apiservice_operator.plugin", "explain", api.name, "-o", "json"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "forbidden" in refused.stderr, refused.stderr
    kubectl(cluster, "create", "rolebinding", f"{user}-explain", "-n", NAMESPACE,
            "--clusterrole=apiservice-operator-explain", f"--serviceaccount={namespace}:{user}")
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert done.returncode == 0, done.stderr
        trace = json.loads(done.stdout)
        assert (trace["verdict"][0]["status"], trace["verdict"][0]["reason"]) == ("True", "Passed"), trace["verdict"]
        report("explain-through-port-forward", endpoints=len(trace["endpoints"]), fix=trace["fix"])
    finally:
        kubectl(cluster, "delete", "rolebinding", f"{user}-explain", "-n", NAMESPACE, check=False)
