"""metrics-server, the aggregated API most clusters run, judged by its users' own command (make e2e-kind).

metrics-server v0.8.0 is built from its Go module (hack/build-metrics-server.sh) and deployed with its
own manifests from that module (manifests/base: ServiceAccount, RBAC, Service, Deployment, APIService
v1beta1.metrics.k8s.io) through a kustomization generated here, which only points the image at the
local one, never pulls it, and adds --kubelet-insecure-tls (kind's kubelets serve self-signed
certificates). The oracle is `kubectl top nodes` and `kubectl top pods -n kube-system` run as an
ordinary user (a ServiceAccount outside system:masters, allowed to read nodes, pods and their
metrics). In each state the three columns (kube-apiserver's Available, ours, whether `kubectl top`
works) are printed and reported (E2E_REPORT), and our verdict must agree with `kubectl top`.

Skipped unless on kind with the metrics-server image loaded (E2E_KIND_NODE, METRICS_SERVER_IMAGE and
METRICS_SERVER_MANIFESTS, set by hack/e2e-kind.sh). Everything it creates is removed at the end,
metrics-server included: no later test needs it, and a metrics API left broken would hold up namespace
deletion (DESIGN 10)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.kube import Kube, condition, wait_conditions

from e2e.test_deployment import NAMESPACE, OURS, Cluster, holder, kubectl, report, user_kubeconfig

NAME = "v1beta1.metrics.k8s.io"
SYSTEM = "kube-system"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{SYSTEM}/deployments/metrics-server"
THEIRS = "Available"
PASSED = ("True", "Passed")


class MetricsAPI:
    """The APIService as wait_conditions reads it."""

    name = NAME

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def apiservice(self) -> dict[str, Any]:
        return dict(self.kube.apiservice(NAME))


@dataclass
class MetricsServer:
    kube: Kube
    cluster: Cluster
    node: str
    user: Path  # kubeconfig of the ordinary user
    api: MetricsAPI = field(init=False)

    def __post_init__(self) -> None:
        self.api = MetricsAPI(self.kube)

    def top(self) -> tuple[bool, str]:
        """Whether the user's `kubectl top` works, and the first line of its error when it does not."""
        for args in (["top", "nodes"], ["top", "pods", "-n", SYSTEM]):
            done = subprocess.run([os.environ.get("KUBECTL", "kubectl"), f"--kubeconfig={self.user}",
                                   "--request-timeout=20s", *args], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                return False, f"kubectl {' '.join(args)}: {lines[0] if lines else f'exit {done.returncode}'}"
        return True, ""

    def wait_top(self, works: bool, timeout: float) -> tuple[bool, str]:
        """Waits until `kubectl top` works (or fails); returns what it saw last, which is the truth to
        judge by even when the wait ran out."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.top()
            if seen[0] == works or time.monotonic() >= deadline:
                return seen
            time.sleep(3)

    def pod(self) -> dict[str, Any]:
        pods = [p for p in self.kube.get(f"/api/v1/namespaces/{SYSTEM}/pods",
                                         labelSelector="k8s-app=metrics-server")["items"]
                if not p["metadata"].get("deletionTimestamp")]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return dict(pods[0])

    def iptables(self, *args: str) -> str:
        return subprocess.run(["docker", "exec", self.node, "iptables", *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout


# --- deploying it with its own manifests ------------------------------------------------------------
def image_name(ref: str) -> str:
    """The name kustomize's `images:` matches: the reference without its tag or digest."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def kustomization(manifests: Path, image: str, work: Path) -> Path:
    """A kustomization over a copy of upstream's manifests/base (the cache is shared: never written),
    changing only what a kind cluster without a registry needs."""
    shutil.copytree(manifests / "base", work / "base")
    docs = [d for d in yaml.safe_load_all((work / "base" / "deployment.yaml").read_text()) if d]
    upstream = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    new_name, _, new_tag = image.rpartition(":")
    patch = [
        {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--kubelet-insecure-tls"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
    ]
    (work / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["base"],
        "images": [{"name": image_name(upstream), "newName": new_name, "newTag": new_tag}],
        "patches": [{"target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": "metrics-server"},
                     "patch": yaml.safe_dump(patch)}],
    }))
    return work


def node_has_image(node: str, image: str) -> bool:
    listed = subprocess.run(["docker", "exec", node, "crictl", "images", "-o", "yaml"], capture_output=True,
                            text=True, timeout=60)
    tags = {t for i in (yaml.safe_load(listed.stdout) or {}).get("images") or [] for t in i.get("repoTags") or []}
    return listed.returncode == 0 and any(t.endswith("/" + image) or t == image for t in tags)


@pytest.fixture(scope="module")
def metrics_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    node = os.environ.get("E2E_KIND_NODE")
    image = os.environ.get("METRICS_SERVER_IMAGE")
    manifests = Path(os.environ.get("METRICS_SERVER_MANIFESTS") or "/nonexistent")
    if not node:
        pytest.skip("not on kind (E2E_KIND_NODE unset): metrics-server runs only in make e2e-kind")
    if not image or not (manifests / "base" / "kustomization.yaml").is_file():
        pytest.skip("metrics-server was not built (METRICS_SERVER_IMAGE / METRICS_SERVER_MANIFESTS unset: "
                    "hack/e2e-kind.sh builds it with hack/build-metrics-server.sh where Go exists)")
    if not node_has_image(node, image):
        pytest.skip(f"the image {image} is not loaded on the node {node}")
    # asked for only now: skipping must not start the local control plane first
    cluster: Cluster = request.getfixturevalue("cluster")
    kube = cluster[0]
    if kube.get_or_none(Kube.apiservice_path(NAME)) is not None:
        pytest.skip(f"{NAME} already exists on this cluster: this test would replace someone's metrics-server")

    work = kustomization(manifests, image, tmp_path_factory.mktemp("metrics-server"))
    suffix = uuid.uuid4().hex[:6]
    namespace, role = f"e2e-top-{suffix}", f"e2e-top-{suffix}"
    try:
        kubectl(cluster, "apply", "-k", str(work))
        kubectl(cluster, "-n", SYSTEM, "rollout", "status", "deploy/metrics-server", "--timeout=180s")
        # the user: a ServiceAccount outside system:masters that may read nodes, pods and their metrics
        kubectl(cluster, "create", "namespace", namespace)
        kubectl(cluster, "create", "serviceaccount", "oncall", "-n", namespace)
        # written as rules, not `kubectl create clusterrole --resource=...`: kubectl resolves those names
        # through discovery, and metrics.k8s.io is not in discovery until kube-apiserver reaches the
        # new Pod (a race CI lost); the wait below is where that is waited for
        kube.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
            "rules": [{"apiGroups": ["", "metrics.k8s.io"], "resources": ["nodes", "pods"],
                       "verbs": ["get", "list"]}]})
        kubectl(cluster, "create", "clusterrolebinding", role, f"--clusterrole={role}",
                f"--serviceaccount={namespace}:oncall")
        user = user_kubeconfig(cluster, namespace, "oncall", work / "oncall.kubeconfig")
        ms = MetricsServer(kube, cluster, node, user)
        # its first scrape of the kubelets takes up to a minute (--metric-resolution=15s, Ready only after)
        t0 = time.monotonic()
        works, error = ms.wait_top(True, 240)
        assert works, f"kubectl top never worked after deploying metrics-server: {error}"
        report("metrics-server-first-top", after_s=round(time.monotonic() - t0, 1))
        yield ms
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", role, "--ignore-not-found", check=False)
        kubectl(cluster, "delete", "clusterrole", role, "--ignore-not-found", check=False)
        kubectl(cluster, "delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)
        kubectl(cluster, "delete", "-k", str(work), "--ignore-not-found", "--wait=false", check=False)


# --- the three columns ------------------------------------------------------------------------------
def columns(ms: MetricsServer, state: str, top: tuple[bool, str], capsys: pytest.CaptureFixture[str],
            **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = ms.api.apiservice()
    theirs, ours = condition(obj, THEIRS) or {}, condition(obj, OURS) or {}
    degraded = condition(obj, "apiservice-operator.io/Degraded") or {}

    def word(c: dict[str, Any]) -> str:
        return f"{c.get('status')}/{c.get('reason')}"

    top_word = "yes" if top[0] else f"no: {top[1]}"
    with capsys.disabled():
        print(f"\n  {state:<32} | kube-apiserver {word(theirs):<28} | ours {word(ours):<32} | kubectl top {top_word}")
    report("metrics-server", state=state, kube_apiserver=word(theirs), ours=word(ours), kubectl_top=top_word,
           degraded=word(degraded), kube_apiserver_message=theirs.get("message", "")[:400],
           ours_message=ours.get("message", "")[:600], **extra)
    return theirs, ours


def agrees(ours: dict[str, Any], top: tuple[bool, str]) -> bool:
    return (ours.get("status") == "True") == top[0]


def test_metrics_server_healthy(metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str]) -> None:
    ms = metrics_server
    wait_conditions(ms.api, {OURS: PASSED, THEIRS: PASSED}, 120)
    top = ms.top()
    _, ours = columns(ms, "healthy", top, capsys)
    assert top[0], top[1]
    assert agrees(ours, top)
    # its APIService sets insecureSkipTLSVerify: our probe goes without credentials and is refused, which
    # is the server working, not a degradation
    degraded = condition(ms.api.apiservice(), "apiservice-operator.io/Degraded") or {}
    assert (degraded.get("status"), degraded.get("reason")) == ("False", "AsExpected"), degraded


# --- the faults -------------------------------------------------------------------------------------
def scale(ms: MetricsServer, replicas: int) -> None:
    kubectl(ms.cluster, "-n", SYSTEM, "scale", "deploy/metrics-server", f"--replicas={replicas}")


def apiserver_cgroup(ms: MetricsServer) -> str:
    """kube-apiserver's cgroup (v2 hierarchy) as the node sees it: an iptables cgroup match on it cuts
    that process only, not the kubelet, whose probes would otherwise turn the Pod NotReady."""
    out = subprocess.run(["docker", "exec", ms.node, "sh", "-c",
                          "cat /proc/$(pgrep -xo kube-apiserver)/cgroup"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    path = next((line.split(":", 2)[2] for line in out.splitlines() if line.startswith("0::")), "")
    if path in ("", "/"):
        pytest.skip(f"kube-apiserver has no cgroup of its own in the v2 hierarchy on {ms.node}: {out!r}")
    return path


@dataclass
class Fault:
    id: str
    # (break it, repair it): break returns what it changed, for the repair and the report
    cut: Callable[[MetricsServer], dict[str, Any]]
    mend: Callable[[MetricsServer, dict[str, Any]], None]
    ours: tuple[str, str]
    theirs: tuple[str, str] | None  # None: not asserted
    top_works: bool
    # the Pod must stay Ready: the fault is on kube-apiserver's side only
    pod_stays_ready: bool = False


def _scale_down(ms: MetricsServer) -> dict[str, Any]:
    before = ms.kube.get(DEPLOYMENT)["spec"]["replicas"]
    scale(ms, 0)
    return {"replicas": before}


def _scale_up(ms: MetricsServer, undo: dict[str, Any]) -> None:
    scale(ms, undo["replicas"])


def _cut_kube_apiserver(ms: MetricsServer) -> dict[str, Any]:
    pod = ms.pod()
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p.get("name") == "https")
    rule = ["OUTPUT", "-d", pod["status"]["podIP"], "-p", "tcp", "--dport", str(port),
            "-m", "cgroup", "--path", apiserver_cgroup(ms), "-j", "DROP"]
    ms.iptables("-I", *rule)
    return {"rule": rule, "pod": pod["metadata"]["name"]}


def _uncut(ms: MetricsServer, undo: dict[str, Any]) -> None:
    ms.iptables("-D", *undo["rule"])


def _delete_auth_delegator(ms: MetricsServer) -> dict[str, Any]:
    bindings = ms.kube.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")["items"]
    found = [b for b in bindings if b["roleRef"]["name"] == "system:auth-delegator" and any(
        s.get("kind") == "ServiceAccount" and s.get("namespace") == SYSTEM and s.get("name") == "metrics-server"
        for s in b.get("subjects") or [])]
    assert len(found) == 1, [b["metadata"]["name"] for b in found]
    binding = found[0]
    ms.kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding['metadata']['name']}")
    return {"binding": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": {k: v for k, v in binding["metadata"].items() if k in ("name", "labels")},
                        "roleRef": binding["roleRef"], "subjects": binding["subjects"]}}


def _restore_auth_delegator(ms: MetricsServer, undo: dict[str, Any]) -> None:
    ms.kube.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", undo["binding"])


FAULTS = [
    Fault("scaled-to-0", _scale_down, _scale_up, ("False", "MissingEndpoints"), ("False", "MissingEndpoints"),
          top_works=False),
    # kube-apiserver's own path to the Pod cut on the node, the kubelet's probes still passing
    Fault("control-plane-cut", _cut_kube_apiserver, _uncut, ("False", "ControlPlaneUnreachable"),
          ("False", "FailedDiscoveryCheck"), top_works=False, pod_stays_ready=True),
    # metrics-server can no longer delegate authn/authz: ordinary users are refused, while
    # kube-apiserver's own check (as system:masters, always allowed) still passes (DESIGN 9)
    Fault("auth-delegator-deleted", _delete_auth_delegator, _restore_auth_delegator, ("False", "UsersRefused"),
          PASSED, top_works=False, pod_stays_ready=True),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_metrics_server_verdict_agrees_with_kubectl_top(
    fault: Fault, metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str],
) -> None:
    ms = metrics_server
    wait_conditions(ms.api, {OURS: PASSED, THEIRS: PASSED}, 120)
    assert ms.wait_top(True, 180)[0], "kubectl top does not work before the fault"
    undo = fault.cut(ms)
    t0 = time.monotonic()
    try:
        # the truth first: what the user gets (metrics-server may serve from caches for a while)
        top = ms.wait_top(fault.top_works, 180)
        top_after = time.monotonic() - t0
        # then the verdicts: the reasons we expect, or whatever they settled on by then (recorded in
        # the columns and asserted below, after the repair)
        with contextlib.suppress(AssertionError):
            wait_conditions(ms.api, {OURS: fault.ours}, 120)
        if fault.theirs is not None:
            with contextlib.suppress(AssertionError):
                wait_conditions(ms.api, {THEIRS: fault.theirs}, 120)
        top = ms.top()  # once more, beside the conditions as they are now
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (ms.pod().get("status") or {}).get("conditions") or []) if fault.pod_stays_ready else None
        theirs, ours = columns(ms, fault.id, top, capsys, top_changed_after_s=round(top_after, 1),
                               ours_after_s=round(time.monotonic() - t0, 1), pod_ready=ready)
    finally:
        fault.mend(ms, undo)
    t1 = time.monotonic()
    wait_conditions(ms.api, {OURS: PASSED, THEIRS: PASSED}, 180)
    repaired_top = ms.wait_top(True, 180)
    columns(ms, f"{fault.id} repaired", repaired_top, capsys, after_s=round(time.monotonic() - t1, 1))

    assert top[0] == fault.top_works, f"kubectl top: expected works={fault.top_works}, saw {top}"
    # the verdict must agree with what the user gets
    assert agrees(ours, top), f"ours {ours} but kubectl top works={top[0]} ({top[1]})"
    if fault.pod_stays_ready:
        assert ready, "the metrics-server Pod went NotReady: the fault was not on kube-apiserver's side only"
    if fault.theirs is not None:
        assert (theirs.get("status"), theirs.get("reason")) == fault.theirs, theirs
    # the reason names the hop that breaks (without its binding metrics-server answers 500 to everyone, our
    # anonymous probe too: its SubjectAccessReview forbidden names the cause, core/decide/userpath.py)
    assert (ours.get("status"), ours.get("reason")) == fault.ours, re.sub(r"\s+", " ", str(ours))
    assert repaired_top[0], f"kubectl top does not work after the repair: {repaired_top[1]}"


# --- who it stalls, and who takes it over -----------------------------------------------------------
TESTSERVER_IMAGE = "apiservice-operator-testserver:0.1.0"  # loaded by hack/e2e-kind.sh: any process will do


def leader_metric(ms: MetricsServer, metric: str) -> float | None:
    """A labelled sample of the leading operator Pod's /metrics, through kube-apiserver's pod proxy."""
    resp = ms.kube.http.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{holder(ms.kube)}:8080/proxy/metrics")
    resp.raise_for_status()
    for line in resp.text.splitlines():
        if line.startswith(f'{metric}{{name="{NAME}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def scaling_active(ms: MetricsServer, namespace: str, name: str) -> dict[str, Any]:
    hpa = ms.kube.get(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}")
    return next((c for c in (hpa.get("status") or {}).get("conditions") or [] if c["type"] == "ScalingActive"), {})


def wait_until(what: str, seconds: float, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(2)


@pytest.fixture
def autoscaled(metrics_server: MetricsServer) -> Iterator[tuple[str, str]]:
    """A Deployment with a CPU request and a real HPA on its CPU, scaling (ScalingActive=True)."""
    ms = metrics_server
    namespace = f"e2e-shop-{uuid.uuid4().hex[:6]}"
    kubectl(ms.cluster, "create", "namespace", namespace)
    try:
        ms.kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": TESTSERVER_IMAGE, "imagePullPolicy": "Never",
                                         "command": ["sleep", "infinity"],
                                         "resources": {"requests": {"cpu": "10m"}}}]}}}})
        kubectl(ms.cluster, "-n", namespace, "rollout", "status", "deploy/web", "--timeout=180s")
        kubectl(ms.cluster, "-n", namespace, "autoscale", "deploy/web", "--cpu=50%", "--min=1", "--max=3")
        # the HPA controller reads the Pod's CPU once metrics-server has scraped it (15 s resolution)
        wait_until("the HPA scaling on CPU", 240,
                   lambda: scaling_active(ms, namespace, "web").get("status") == "True")
        yield namespace, "web"
    finally:
        kubectl(ms.cluster, "delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


def test_an_hpa_stalled_by_metrics_server_down_is_named_counted_and_told(
    metrics_server: MetricsServer, autoscaled: tuple[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """The HPA controller cannot scale on CPU while the resource metrics API is down; nothing on the
    APIService says whom that hurts. Ours names the HPA in its message, the gauge counts it and a
    Warning Event says when the number grows: within a minute (the HPA controller looks every 15 s)."""
    ms, (namespace, name) = metrics_server, autoscaled
    wait_conditions(ms.api, {OURS: PASSED}, 120)
    scale(ms, 0)
    t0 = time.monotonic()
    try:
        stalled = wait_until("the HPA's own ScalingActive=False", 120,
                             lambda: (c := scaling_active(ms, namespace, name)).get("status") == "False" and c)
        found = wait_conditions(ms.api, {OURS: ("False", "MissingEndpoints")}, 120,
                                messages={OURS: f"stalling 1 HorizontalPodAutoscaler: {namespace}/{name}"})
        named_after = time.monotonic() - t0
        gauge = leader_metric(ms, "apiservice_operator_stalled_autoscalers")
        events = wait_until("the Event", 60, lambda: [
            e for e in ms.kube.get("/api/v1/namespaces/default/events")["items"]
            if e["involvedObject"].get("name") == NAME and e["type"] == "Warning"
            and f"{namespace}/{name}" in e["message"]])
        with capsys.disabled():
            print(f"\n  HPA {namespace}/{name}: {stalled['reason']}: {stalled['message'][:160]}"
                  f"\n  ours after {named_after:.1f} s: {found[OURS]['message'][-160:]}"
                  f"\n  gauge {gauge}; Event {events[0]['reason']}: {events[0]['message'][-120:]}")
        report("hpa-stalled", hpa=f"{namespace}/{name}", hpa_reason=stalled["reason"],
               named_after_s=round(named_after, 1), gauge=gauge, event=events[0]["reason"],
               ours=found[OURS]["message"][-300:])
        assert stalled["reason"] == "FailedGetResourceMetric", stalled
        assert named_after < 60, f"named after {named_after:.0f} s"
        assert gauge == 1
    finally:
        scale(ms, 1)
    found = wait_conditions(ms.api, {OURS: PASSED}, 180)
    assert "stalling" not in found[OURS]["message"]
    wait_until("the HPA scaling again", 180, lambda: scaling_active(ms, namespace, name).get("status") == "True")
    assert leader_metric(ms, "apiservice_operator_stalled_autoscalers") == 0


def test_a_second_backend_taking_over_the_metrics_apiservice_is_a_warning_naming_both_and_the_manager(
    metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str],
) -> None:
    """Installing KEDA or prometheus-adapter repoints v1beta1.metrics.k8s.io at its own Service with a
    server-side apply. Here the second backend is the same metrics-server Pods behind another Service in
    another namespace, so kubectl top keeps working and only the change of hands is news."""
    ms = metrics_server
    wait_conditions(ms.api, {OURS: PASSED}, 120)
    other = f"e2e-keda-{uuid.uuid4().hex[:6]}"
    original = ms.api.apiservice()
    kubectl(ms.cluster, "create", "namespace", other)
    try:
        ms.kube.create(f"/api/v1/namespaces/{other}/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "keda-operator-metrics-apiserver"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "https"}]}})
        # the Pods live in kube-system: a selector-less Service with its own slice, as a proxying backend has
        pod = ms.pod()
        port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p.get("name") == "https")
        ms.kube.create(f"/apis/discovery.k8s.io/v1/namespaces/{other}/endpointslices", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "keda-1", "labels": {"kubernetes.io/service-name": "keda-operator-metrics-apiserver"}},
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [pod["status"]["podIP"]], "conditions": {"ready": True}}]})
        spec = {k: v for k, v in original["spec"].items() if k != "service"}
        spec["service"] = {"namespace": other, "name": "keda-operator-metrics-apiserver", "port": 443}
        taken = ms.kube.apply(Kube.apiservice_path(NAME), {"apiVersion": "apiregistration.k8s.io/v1",
                                                           "kind": "APIService", "metadata": {"name": NAME},
                                                           "spec": spec}, manager="keda-operator")
        assert taken["spec"]["service"]["namespace"] == other
        events = wait_until("the BackendChanged Event", 60, lambda: [
            e for e in ms.kube.get("/api/v1/namespaces/default/events")["items"]
            if e["involvedObject"].get("name") == NAME and e["reason"] == "BackendChanged"])
        event = events[-1]
        with capsys.disabled():
            print(f"\n  {event['type']} {event['reason']}: {event['message']}")
        report("metrics-takeover", type=event["type"], message=event["message"])
        assert event["type"] == "Warning"
        assert (f"moved from Service kube-system/metrics-server:443 to Service {other}/keda-operator-metrics-apiserver"
                ":443 by keda-operator (Apply") in event["message"], event["message"]
        # the new backend serves: the verdict follows it
        wait_conditions(ms.api, {OURS: PASSED}, 120)
    finally:
        back = {k: v for k, v in original["spec"].items()}
        ms.kube.apply(Kube.apiservice_path(NAME), {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                                                   "metadata": {"name": NAME}, "spec": back}, manager="e2e-restore")
        kubectl(ms.cluster, "delete", "namespace", other, "--ignore-not-found", "--wait=false", check=False)
    wait_conditions(ms.api, {OURS: PASSED, THEIRS: PASSED}, 180)
