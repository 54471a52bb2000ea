"""e2e fixtures: any cluster from E2E_KUBECONFIG, or (unset) the local control plane.

    make e2e        the local control plane, servers as local processes (runs in CI)
    make e2e-kind   a kind cluster, the operator as its Deployment, servers as Pods
"""

from __future__ import annotations

import itertools
import os
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.cluster.controlplane import ControlPlane, ensure_binaries
from tests.cluster.kube import Kube
from tests.cluster.operator import OperatorProcess, install_manifests, service_account_kubeconfig

from e2e.backends import Backend, LocalBackend, PodBackend


@pytest.fixture(scope="session")
def cluster() -> Iterator[tuple[Kube, Path, ControlPlane | None]]:
    given = os.environ.get("E2E_KUBECONFIG")
    if given:
        config = yaml.safe_load(Path(given).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster_ = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        work = Path(tempfile.mkdtemp(prefix="e2e-"))

        def materialise(key: str, data_key: str, name: str) -> str | None:
            import base64

            if data_key in cluster_ or data_key in user:
                path = work / name
                path.write_bytes(base64.b64decode((cluster_ | user)[data_key]))
                return str(path)
            return (cluster_ | user).get(key)

        ca = materialise("certificate-authority", "certificate-authority-data", "ca.crt")
        context_ = ssl.create_default_context(cafile=ca)
        cert = materialise("client-certificate", "client-certificate-data", "client.crt")
        key = materialise("client-key", "client-key-data", "client.key")
        if cert and key:
            context_.load_cert_chain(cert, key)
        kube = Kube(cluster_["server"], context_, token=user.get("token"))
        yield kube, Path(given), None
        kube.close()
        return
    cp = ControlPlane(workdir=Path(tempfile.mkdtemp(prefix="e2e-cp-")), bin_dir=ensure_binaries()).start()
    kube = Kube(cp.server, cp.ssl_context())
    try:
        yield kube, cp.kubeconfig, cp
    finally:
        kube.close()
        cp.stop()


@pytest.fixture(scope="session")
def has_nodes(cluster: tuple[Kube, Path, ControlPlane | None]) -> bool:
    return bool(cluster[0].get("/api/v1/nodes")["items"])


@pytest.fixture(scope="session")
def backend(cluster: tuple[Kube, Path, ControlPlane | None], has_nodes: bool,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    kube, kubeconfig, _ = cluster
    chosen: Backend
    if has_nodes:
        chosen = PodBackend(kube, kubeconfig, os.environ.get("KUBECTL", "kubectl"))
    else:
        chosen = LocalBackend(kube, tmp_path_factory.mktemp("servers"))
    yield chosen
    chosen.close()


@pytest.fixture(scope="session")
def operator(cluster: tuple[Kube, Path, ControlPlane | None], has_nodes: bool,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """On a cluster with nodes the operator is the Deployment that `make e2e-kind` applied; on the
    local control plane (no kubelet) it runs here, as the ServiceAccount from manifests/."""
    _, _, cp = cluster
    if has_nodes or cp is None:
        yield
        return
    install_manifests(cp)
    work = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(service_account_kubeconfig(cp, work / "sa.kubeconfig"), work / "operator.log",
                           ["--probe-interval", "5", "--metrics-port", "0"]).start()
    yield
    code = proc.stop()
    print(f"\n===== operator log (exit {code}) =====\n{proc.logs()[-6000:]}")


_counter = itertools.count(1)


@pytest.fixture
def namespace(cluster: tuple[Kube, Path, ControlPlane | None]) -> str:
    name = f"e2e{next(_counter)}-{uuid.uuid4().hex[:6]}"
    cluster[0].create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name
