"""Pure builders for Kubernetes objects, as plain dicts shaped like the API returns them."""

from __future__ import annotations

import base64
from typing import Any

from tests.cluster import pki

# a real (throw-away) CA certificate: resolve loads every caBundle, as kube-aggregator does
CA_PEM = pki.make_ca("unit-tests-ca").cert_pem


def make_apiservice(
    group: str = "demo.example.com",
    version: str = "v1",
    *,
    service_namespace: str | None = "default",
    service_name: str | None = "demo",
    port: int | None = 443,
    ca_bundle: bytes | None = None,
    insecure_skip_tls_verify: bool = False,
    labels: dict[str, str] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    name = f"{version}.{group}" if group else version
    spec: dict[str, Any] = {
        "group": group, "version": version, "groupPriorityMinimum": 1000, "versionPriority": 15,
    }
    if service_name is not None:
        service: dict[str, Any] = {"namespace": service_namespace, "name": service_name}
        if port is not None:
            service["port"] = port
        spec["service"] = service
    if ca_bundle is not None:
        spec["caBundle"] = base64.b64encode(ca_bundle).decode()
    if insecure_skip_tls_verify:
        spec["insecureSkipTLSVerify"] = True
    obj: dict[str, Any] = {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name, "generation": generation, "labels": labels or {}},
        "spec": spec,
    }
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
    return obj


def make_service(
    namespace: str = "default",
    name: str = "demo",
    *,
    ports: list[dict[str, Any]] | None = None,
    service_type: str = "ClusterIP",
    external_name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": service_type}
    if service_type == "ExternalName":
        spec["externalName"] = external_name or "example.internal"
    if ports is None:
        ports = [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]
    spec["ports"] = ports
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": name}, "spec": spec}


def make_endpoint(address: str, *, ready: bool | None = True, terminating: bool | None = None) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [address], "conditions": conditions}


def make_slice(
    namespace: str = "default",
    service: str = "demo",
    endpoints: list[dict[str, Any]] | None = None,
    *,
    name: str | None = None,
    port: int = 8443,
    port_name: str | None = "https",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    slice_port: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if port_name is not None:
        slice_port["name"] = port_name
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": namespace, "name": name or f"{service}-slice",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints if endpoints is not None else [],
        "ports": [slice_port],
    }
