"""Where the aggregated test servers live: local processes (local control plane, no kubelet) or
Pods (a cluster with nodes, e.g. kind). The scenarios only see this interface."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any, Protocol

from tests import builders
from tests.cluster import pki
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_for

TEST_SERVER_IMAGE = "apiservice-operator-testserver:0.1.0"


class Api(Protocol):
    name: str

    def apiservice(self) -> dict[str, Any]: ...
    def set_mode(self, server: int, **state: Any) -> None: ...
    def stop(self, server: int) -> None: ...
    def start(self, server: int) -> None: ...


class Backend(Protocol):
    def create(self, namespace: str, group: str, servers: int) -> Api: ...
    def close(self) -> None: ...


class LocalApi:
    def __init__(self, api: AggregatedAPI) -> None:
        self.api = api
        self.name = api.name

    def apiservice(self) -> dict[str, Any]:
        return self.api.apiservice()

    def set_mode(self, server: int, **state: Any) -> None:
        self.api.servers[server].set_state(**state)

    def stop(self, server: int) -> None:
        self.api.servers[server].stop()

    def start(self, server: int) -> None:
        self.api.servers[server].start()


class LocalBackend:
    """Servers are processes on 10.250.0.x in our network namespace; EndpointSlices are hand-made."""

    def __init__(self, kube: Kube, workdir: Path) -> None:
        self.kube, self.workdir = kube, workdir
        self.ca = pki.make_ca("e2e-ca")
        self.apis: list[AggregatedAPI] = []

    def create(self, namespace: str, group: str, servers: int) -> Api:
        api = AggregatedAPI(self.kube, namespace, "api", group, "v1", self.workdir, self.ca)
        self.apis.append(api)
        api.start_servers(servers)
        api.register_service()
        api.write_slice()
        api.register_apiservice()
        return LocalApi(api)

    def close(self) -> None:
        for api in self.apis:
            api.remove()


class PodApi:
    def __init__(self, backend: PodBackend, namespace: str, group: str, pods: list[str]) -> None:
        self.backend, self.namespace, self.pods = backend, namespace, pods
        self.name = f"v1.{group}"

    def apiservice(self) -> dict[str, Any]:
        return dict(self.backend.kube.apiservice(self.name))

    def set_mode(self, server: int, **state: Any) -> None:
        # the server re-reads its state file on every request
        self.backend.kubectl("exec", "-n", self.namespace, self.pods[server], "--", "python3", "-c",
                             f"open('/state/state.json','w').write({json.dumps(json.dumps(state))})")

    def stop(self, server: int) -> None:
        # a Pod that stops serving but stays Ready is what the probe must catch: refuse connections
        self.set_mode(server, mode="close")

    def start(self, server: int) -> None:
        self.set_mode(server, mode="healthy")


class PodBackend:
    """Servers are Pods from the test image behind a selector Service: the real EndpointSlice
    controller and kube-apiserver's own routing do the rest."""

    def __init__(self, kube: Kube, kubeconfig: Path, kubectl: str) -> None:
        self.kube, self.kubeconfig, self.kubectl_path = kube, kubeconfig, kubectl
        self.ca = pki.make_ca("e2e-ca")
        self.names: list[str] = []

    def kubectl(self, *args: str) -> str:
        return subprocess.run([self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, check=True, timeout=120).stdout

    def create(self, namespace: str, group: str, servers: int) -> Api:
        dns = f"api.{namespace}.svc"
        pair = pki.issue(self.ca, dns, dns_names=(dns,), server=True)
        self.kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-tls"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(),
                     "tls.key": base64.b64encode(pair.key_pem).decode()}})
        pods = []
        for i in range(servers):
            name = f"api-{i}"
            pods.append(name)
            self.kube.create(f"/api/v1/namespaces/{namespace}/pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "api"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [{
                        "name": "server", "image": TEST_SERVER_IMAGE, "imagePullPolicy": "Never",
                        "args": ["--address", "0.0.0.0", "--port", "8443", "--cert", "/tls/tls.crt",
                                 "--key", "/tls/tls.key", "--group", group, "--version", "v1",
                                 "--state", "/state/state.json"],
                        "ports": [{"name": "https", "containerPort": 8443}],
                        # from inside the Pod, not from the node: a test that cuts the node's own
                        # traffic to the Pod (kube-apiserver's path) must not make it NotReady too
                        "readinessProbe": {"exec": {"command": [
                            "python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8443), 1)"]},
                            "periodSeconds": 2},
                        "volumeMounts": [{"name": "tls", "mountPath": "/tls"},
                                         {"name": "state", "mountPath": "/state"}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": "api-tls"}},
                                {"name": "state", "emptyDir": {}}],
                }})
        service = builders.make_service(namespace, "api")
        service["spec"]["selector"] = {"app": "api"}
        self.kube.create(Kube.service_path(namespace), service)
        body = builders.make_apiservice(group, service_namespace=namespace, service_name="api",
                                        ca_bundle=self.ca.cert_pem)
        self.kube.create(Kube.apiservice_path(), body)
        self.names.append(body["metadata"]["name"])

        def all_ready() -> bool:
            items = self.kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=api")["items"]
            return len(items) == servers and all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get(
                    "conditions") or []) for p in items)

        wait_for(all_ready, 120, f"test server pods in {namespace}", interval=1)
        return PodApi(self, namespace, group, pods)

    def close(self) -> None:
        for name in self.names:
            self.kube.delete(Kube.apiservice_path(name))

