"""resolve: APIService + Service + EndpointSlices -> probe targets, or the reason there are none.

Mirrors kube-aggregator's AvailableConditionController.sync (remote_available_controller.go,
v1.37), reason strings and messages included, so that our verdict and kube-apiserver's agree.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable

from cryptography import x509

from apiservice_operator.core import certs
from apiservice_operator.core.model import Obj, ProbePlan, Resolution, Status, Target, Verdict

DEFAULT_SERVICE_PORT = 443
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def discovery_path(apiservice: Obj) -> tuple[str, str]:
    """(path, expected groupVersion). The legacy `v1.` APIService is the core group at /api/v1."""
    spec = apiservice.get("spec") or {}
    group, version = spec.get("group") or "", spec.get("version") or ""
    if not group:
        return f"/api/{version}", version
    return f"/apis/{group}/{version}", f"{group}/{version}"


def service_ref(apiservice: Obj) -> tuple[str, str] | None:
    service = (apiservice.get("spec") or {}).get("service")
    if not service:
        return None
    return service.get("namespace") or "", service.get("name") or ""


def is_ready(endpoint: Obj) -> bool:
    # kube-aggregator's hasAvailableEndpoint: an unset `ready` counts as ready (the API's
    # documented meaning is "unknown, treat as ready"); terminating endpoints have ready=false.
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


def _decode_ca_bundle(apiservice: Obj) -> tuple[bytes | None, str | None]:
    raw = (apiservice.get("spec") or {}).get("caBundle")
    if not raw:
        return None, None
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None, "spec.caBundle is not valid base64"
    if _PEM_CERT not in data:
        return None, "spec.caBundle holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    problem = _unloadable(data)
    return (None, problem) if problem else (data, None)


@functools.lru_cache(maxsize=1024)
def _unloadable(data: bytes) -> str | None:
    """PEM armour around something that is no certificate is as bad as no PEM at all."""
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        return f"spec.caBundle holds a PEM block that is no loadable certificate: {exc}"
    return None


def resolve(apiservice: Obj, service: Obj | None, slices: Iterable[Obj]) -> Resolution:
    ref = service_ref(apiservice)
    if ref is None:
        return Resolution(verdict=Verdict(Status.TRUE, "Local", "Local APIServices are always available"))
    namespace, name = ref
    spec = apiservice.get("spec") or {}
    port = int((spec.get("service") or {}).get("port") or DEFAULT_SERVICE_PORT)

    if service is None:
        return Resolution(verdict=Verdict(
            Status.FALSE, "ServiceNotFound", f'service/{name} in "{namespace}" is not present'))

    ca_bundle, ca_error = _decode_ca_bundle(apiservice)
    insecure = bool(spec.get("insecureSkipTLSVerify"))
    path, group_version = discovery_path(apiservice)

    def plan(targets: tuple[Target, ...]) -> Resolution:
        return Resolution(plan=ProbePlan(
            targets=targets, path=path, group_version=group_version,
            server_name=f"{name}.{namespace}.svc", ca_bundle=ca_bundle, insecure_skip_tls_verify=insecure,
            ca_certificates=certs.from_pem(ca_bundle) if ca_bundle and not insecure else (),
        ))

    service_spec = service.get("spec") or {}
    if service_spec.get("type") == "ExternalName":
        # DESIGN 3.4: probe the external name and port; there are no endpoints to check.
        external = service_spec.get("externalName") or ""
        if not external:
            return Resolution(verdict=Verdict(
                Status.FALSE, "ServiceNotFound", f'service/{name} in "{namespace}" has no externalName'))
        if ca_error and not insecure:
            return Resolution(verdict=Verdict(Status.FALSE, "InvalidCABundle", ca_error))
        return plan((Target(external, port),))

    service_port = next((p for p in service_spec.get("ports") or [] if p.get("port") == port), None)
    if service_port is None:
        return Resolution(verdict=Verdict(
            Status.FALSE, "ServicePortError", f'service/{name} in "{namespace}" is not listening on port {port}'))
    port_name = service_port.get("name") or ""

    slices = list(slices)
    if not slices:
        return Resolution(verdict=Verdict(
            Status.FALSE, "EndpointsNotFound", f'cannot find endpointslices for service/{name} in "{namespace}"'))

    targets: list[Target] = []
    for endpoint_slice in sorted(slices, key=lambda s: (s.get("metadata") or {}).get("name") or ""):
        # A slice's ports apply to all its endpoints; the port is found by the Service port's name.
        # kube-aggregator requires the name to be set (an absent name is not ""): so do we.
        slice_port = next(
            (p for p in endpoint_slice.get("ports") or []
             if p.get("name") is not None and p.get("name") == port_name and p.get("port") is not None),
            None,
        )
        if slice_port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            if not is_ready(endpoint):
                continue
            # Each endpoint is one Pod; all its addresses are the same Pod (the API says so),
            # so the first address stands for it, as kube-proxy uses it.
            addresses = endpoint.get("addresses") or []
            if addresses:
                targets.append(Target(addresses[0], int(slice_port["port"])))
    targets = sorted(set(targets), key=lambda t: (t.host, t.port))
    if not targets:
        return Resolution(verdict=Verdict(
            Status.FALSE, "MissingEndpoints",
            f'endpointslices for service/{name} in "{namespace}" have no addresses with port name "{port_name}"'))

    if ca_error and not insecure:
        return Resolution(verdict=Verdict(Status.FALSE, "InvalidCABundle", ca_error))
    return plan(tuple(targets))
