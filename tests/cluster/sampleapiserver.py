"""k8s.io/sample-apiserver, a real aggregated API server nobody here wrote, run against the local
control plane as a user would deploy it (DESIGN.md 9), minus the Pod: a local process on a
10.250.0.x address, a selector-less Service plus a hand-made EndpointSlice, an APIService.

It authenticates and authorizes ordinary users by delegating to kube-apiserver (TokenReview,
SubjectAccessReview) as its own ServiceAccount. Without `system:auth-delegator` those reviews are
forbidden: ordinary users' requests through kube-apiserver fail with 500 while kube-apiserver's own
check, made as `system:masters`, still passes. That blind spot is what the suite uses it for.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml

from tests.cluster import pki
from tests.cluster.controlplane import REPO, stop_group
from tests.cluster.harness import next_address

VERSION = os.environ.get("SAMPLE_APISERVER_VERSION", "v0.37.2")
GROUP = "wardle.example.com"
API_VERSION = "v1alpha1"
SERVICE = "api"
SERVER_PORT = 8443
SERVICE_ACCOUNT = "sample-apiserver"


def ensure_binary() -> Path:
    """The cached sample-apiserver, built from its Go module on first use (~2.5-6 min)."""
    explicit = os.environ.get("SAMPLE_APISERVER_BIN")
    if explicit:
        return Path(explicit)
    result = subprocess.run(
        [str(REPO / "hack" / "build-sample-apiserver.sh")], stdout=subprocess.PIPE, stderr=sys.stderr,
        text=True, check=True, env={**os.environ, "SAMPLE_APISERVER_VERSION": VERSION},
    )
    return Path(result.stdout.strip().splitlines()[-1])


class ControlPlaneLike(Protocol):
    """What SampleAPIServer needs of tests.cluster.controlplane.ControlPlane."""

    workdir: Path
    ca_path: Path

    @property
    def server(self) -> str: ...

    @property
    def etcd_url(self) -> str: ...

    def kubectl(self, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]: ...


class SampleAPIServerError(RuntimeError):
    pass


# What its logs showed it needs beyond the two delegation bindings: its admission plugins
# (NamespaceLifecycle; the webhook and admission-policy plugins) and API Priority and Fairness
# list and watch these through --kubeconfig, and /readyz waits for those informers to sync.
EXTRA_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["admissionregistration.k8s.io"],
     "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations",
                   "validatingadmissionpolicies", "validatingadmissionpolicybindings",
                   "mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["flowcontrol.apiserver.k8s.io"],
     "resources": ["prioritylevelconfigurations", "flowschemas"], "verbs": ["list", "watch"]},
]


class SampleAPIServer:
    """One sample-apiserver process and its registration. `start()` blocks until it answers
    /readyz and kube-apiserver's own `Available` is True; `stop()` undoes everything it can (the
    Namespace stays: without a controller-manager it would never finish terminating)."""

    def __init__(self, control_plane: ControlPlaneLike, workdir: Path, *, namespace: str | None = None,
                 binary: Path | None = None, ready_timeout: float = 120.0) -> None:
        self.cp = control_plane
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._namespace = namespace or f"wardle-{uuid.uuid4().hex[:6]}"
        self._address = next_address()
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.ca = pki.make_ca(f"sample-apiserver-ca-{self._namespace}")
        self.log_path = self.workdir / "sample-apiserver.log"
        self.kubeconfig = self.workdir / "sample-apiserver.kubeconfig"
        self.popen: subprocess.Popen[bytes] | None = None
        # cluster-scoped names carry the namespace: several instances may share one control plane
        self.auth_delegator_binding = f"{self._namespace}:sample-apiserver:auth-delegator"
        self.cluster_role = f"{self._namespace}:sample-apiserver"
        self.auth_reader_binding = f"{self._namespace}:sample-apiserver:auth-reader"

    # --- what tests read --------------------------------------------------------------------------
    @property
    def apiservice_name(self) -> str:
        return f"{API_VERSION}.{GROUP}"

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return SERVER_PORT

    @property
    def service_dns(self) -> str:
        """The name kube-apiserver verifies the serving certificate against."""
        return f"{SERVICE}.{self._namespace}.svc"

    @property
    def url(self) -> str:
        """Direct, bypassing kube-apiserver. Connect with ssl_context() and SNI service_dns: the
        certificate names only the Service, as a real deployment's would."""
        return f"https://{self._address}:{SERVER_PORT}"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        return context

    def direct_get(self, path: str, token: str | None = None, timeout: float = 10) -> httpx.Response:
        """GET straight to the server (its CA, its Service's name as SNI), optionally as a bearer."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(verify=self.ssl_context(), timeout=timeout) as client:
            return client.get(self.url + path, headers=headers, extensions={"sni_hostname": self.service_dns})

    def apiservice(self) -> dict[str, Any]:
        return dict(json.loads(self.cp.kubectl("get", "apiservice", self.apiservice_name, "-o", "json").stdout))

    def available(self) -> dict[str, Any] | None:
        """kube-apiserver's own `Available` condition on the APIService."""
        for cond in (self.apiservice().get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Available":
                return dict(cond)
        return None

    def logs(self, max_chars: int = 200_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except FileNotFoundError:
            return ""

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> SampleAPIServer:
        binary = self.binary or ensure_binary()
        self._apply(self._namespace_and_account())
        self._apply(self._rbac())
        self._write_kubeconfig()
        cert, key = self._write_serving_pair()
        argv = [
            str(binary),
            f"--etcd-servers={self.cp.etcd_url}",
            # a prefix of its own, outside kube-apiserver's /registry: instances never share data
            f"--etcd-prefix=/sample-apiserver/{self._namespace}",
            f"--bind-address={self._address}",
            f"--secure-port={SERVER_PORT}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--v=1",
        ]
        log = self.log_path.open("ab")
        try:
            # its own process group, so stop() reaches anything it forks; its cwd is ours because
            # its defaults (e.g. --cert-dir) are relative paths
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        try:
            self._wait_ready()
            self._apply(self._registration())
            self.wait_available("True", self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the process and removes the APIService and the RBAC it was given."""
        self._stop_process()
        for kind, name, *ns in (("apiservice", self.apiservice_name),
                                ("clusterrolebinding", self.auth_delegator_binding),
                                ("clusterrolebinding", self.cluster_role),
                                ("clusterrole", self.cluster_role),
                                ("rolebinding", self.auth_reader_binding, "kube-system")):
            self.cp.kubectl("delete", kind, name, *(["-n", ns[0]] if ns else []), "--ignore-not-found",
                            "--wait=false", check=False)

    def _stop_process(self) -> None:
        stop_group(self.popen)
        self.popen = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    # --- the fault ------------------------------------------------------------------------------
    def delete_auth_delegator_binding(self) -> None:
        """Its TokenReviews and SubjectAccessReviews become forbidden: ordinary users are refused."""
        self.cp.kubectl("delete", "clusterrolebinding", self.auth_delegator_binding, "--ignore-not-found")

    def restore_auth_delegator_binding(self) -> None:
        self._apply([self._auth_delegator_binding()])

    # --- waits ----------------------------------------------------------------------------------
    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                raise SampleAPIServerError(f"sample-apiserver exited early\n{self.logs()[-6000:]}")
            try:
                # /readyz is in --authorization-always-allow-paths and anonymous requests are
                # authenticated as system:anonymous, so no credentials are needed here
                resp = self.direct_get("/readyz", timeout=5)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[-600:]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise SampleAPIServerError(
            f"sample-apiserver not ready after {self.ready_timeout}s: {last}\n{self.logs()[-6000:]}")

    def wait_available(self, status: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        cond: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            cond = self.available()
            if cond is not None and cond.get("status") == status:
                return cond
            time.sleep(0.5)
        raise SampleAPIServerError(
            f"{self.apiservice_name}: Available never became {status} in {timeout}s; last: {cond}\n"
            f"{self.logs()[-6000:]}")

    # --- objects ------------------------------------------------------------------------------
    def _apply(self, objects: list[dict[str, Any]]) -> None:
        self.cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def _namespace_and_account(self) -> list[dict[str, Any]]:
        # no controller-manager here, so no default ServiceAccounts: create ours
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self._namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": SERVICE_ACCOUNT, "namespace": self._namespace}},
        ]

    def _subjects(self) -> list[dict[str, Any]]:
        return [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": self._namespace}]

    def _auth_delegator_binding(self) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": self.auth_delegator_binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:auth-delegator"},
            "subjects": self._subjects(),
        }

    def _rbac(self) -> list[dict[str, Any]]:
        return [
            self._auth_delegator_binding(),
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": self.auth_reader_binding, "namespace": "kube-system"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "extension-apiserver-authentication-reader"},
             "subjects": self._subjects()},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": self.cluster_role}, "rules": EXTRA_RULES},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": self.cluster_role},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": self.cluster_role},
             "subjects": self._subjects()},
        ]

    def _registration(self) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": SERVICE, "namespace": self._namespace},
             "spec": {"ports": [{"name": "https", "port": 443, "targetPort": SERVER_PORT, "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{SERVICE}-1", "namespace": self._namespace,
                          "labels": {"kubernetes.io/service-name": SERVICE}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [self._address], "conditions": {"ready": True}}],
             "ports": [{"name": "https", "port": SERVER_PORT, "protocol": "TCP"}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": self.apiservice_name},
             "spec": {"group": GROUP, "version": API_VERSION,
                      "service": {"namespace": self._namespace, "name": SERVICE, "port": 443},
                      "caBundle": base64.b64encode(self.ca.cert_pem).decode(),
                      "groupPriorityMinimum": 1000, "versionPriority": 15}},
        ]

    def _write_serving_pair(self) -> tuple[Path, Path]:
        pair = pki.issue(self.ca, self.service_dns, dns_names=(self.service_dns,), server=True)
        return pair.write(self.workdir, "serving")

    def _write_kubeconfig(self) -> None:
        # It runs in the control plane's network namespace, so kube-apiserver's loopback URL works.
        token = self.cp.kubectl("create", "token", SERVICE_ACCOUNT, "-n", self._namespace,
                                "--duration=12h").stdout.strip()
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.cp.server,
                                                       "certificate-authority": str(self.cp.ca_path)}}],
            "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": SERVICE_ACCOUNT}}],
            "current-context": "sa",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)


def sample_apiserver_fixture(control_plane: ControlPlaneLike, tmp_path_factory: pytest.TempPathFactory,
                             request: pytest.FixtureRequest) -> Iterator[SampleAPIServer]:
    """Body of a session-scoped `sample_apiserver` fixture (one APIService name per cluster):

        sample_apiserver = pytest.fixture(scope="session", name="sample_apiserver")(sample_apiserver_fixture)

    The binary is built on first use; its log is printed when tests failed meanwhile."""
    server = SampleAPIServer(control_plane, tmp_path_factory.mktemp("sample-apiserver"), binary=ensure_binary())
    server.start()
    failed_before = request.session.testsfailed
    try:
        yield server
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n===== sample-apiserver log (tests failed) =====\n{server.logs(20000)}")
        server.stop()
