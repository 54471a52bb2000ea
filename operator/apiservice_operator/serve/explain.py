"""explain: one fresh check of one APIService, hop by hop, rendered for a person. The check is the
controller's own pipeline (check/pipeline.py) run traced, so the verdict shown is the one the
controller would write (a second trace that could disagree with it would be worse than none).
Served read-only on the operator's port; `kubectl apiservices explain NAME` fetches it through
kube-apiserver's service proxy, so it runs where the Pods are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from apiservice_operator.check.pipeline import Pipeline
from apiservice_operator.core.backends import BackendChange
from apiservice_operator.core.model import Certificate, Condition, ErrorKind, Handshake, ProbePlan, ProbeResult, Status
from apiservice_operator.probing.pathcheck import kube_available


def _cert(c: Certificate) -> dict[str, Any]:
    return asdict(c)


def fix_for(available: Condition, degraded: Condition, plan: ProbePlan | None,
            probes: Sequence[ProbeResult]) -> str:
    """The failing hop's fix in one sentence. Pure."""
    reason = available.reason
    failed = [p for p in probes if not p.ok]
    ports = ", ".join(f"TCP {p}" for p in sorted({t.port for t in plan.targets})) if plan else ""
    if reason == "FailedDiscoveryCheck" and failed:
        first = failed[0]
        server = plan.server_name if plan else "the Service's DNS name"
        by_kind = {
            ErrorKind.TLS: f"the server's certificate does not verify against spec.caBundle for {server}: issue it "
                           "from the CA in spec.caBundle with that DNS name, or put its CA in spec.caBundle",
            ErrorKind.TIMEOUT: "the server takes no request within the budget: look at its Pods (logs, CPU, a hung "
                               "process) and at anything between them and the callers",
            ErrorKind.REFUSED: f"nothing listens on {first.target.endpoint}: is the server running, and is the "
                               "Service's targetPort the port it listens on?",
            ErrorKind.HTTP_STATUS: f"the server answers {first.detail}: its own logs say why",
            ErrorKind.INVALID_DOCUMENT: "the server does not serve this group/version's discovery document: is the "
                                        "APIService pointing at the right Service?",
            ErrorKind.UNAUTHORIZED: "the server refuses an identity that may read discovery: check its "
                                    "system:auth-delegator binding",
            ErrorKind.CONNECTION: f"the connection to {first.target.endpoint} breaks: {first.detail}",
        }
        return by_kind.get(first.error or ErrorKind.CONNECTION, "")
    fixes = {
        "Passed": "nothing to fix" if degraded.status is not Status.TRUE else "",
        "Local": "nothing to fix: kube-apiserver serves it itself",
        "ServiceNotFound": "create the Service spec.service names, or point spec.service at the right one",
        "ServicePortError": "add spec.service.port to the Service's ports, or set spec.service.port to one it has",
        "EndpointsNotFound": "the Service has no EndpointSlices: give it a selector that matches running Pods",
        "MissingEndpoints": "no endpoint is ready under the Service port's name: check the Pods' readiness and "
                            "that the EndpointSlice's port name matches the Service port's",
        "InvalidCABundle": "set spec.caBundle to the PEM of the CA that signed the server's certificate",
        "ControlPlaneUnreachable": f"allow traffic from the control plane (kube-apiserver's hosts) to the Pods on "
                                   f"{ports}",
        "UsersRefused": "restore the server's ClusterRoleBinding to system:auth-delegator and its RoleBinding to "
                        "extension-apiserver-authentication-reader in kube-system",
        "FrontProxyNotTrusted": "give the server kube-apiserver's front-proxy CA as its requestheader client CA (it "
                                "reads it from the extension-apiserver-authentication ConfigMap in kube-system)",
        "ProbeUnauthorized": "let authenticated users get discovery paths again (the system:discovery binding)",
        "AwaitingKubeAPIServer": "nothing yet: kube-apiserver re-checks within seconds (its discovery within a "
                                 "minute); explain again",
        "DiscoveryStale": "make the server answer its root /apis with aggregated discovery (v2) within 5 s, "
                          "listing this group/version; kube-apiserver then refreshes within a minute",
        "CheckFailed": "the operator could not finish its own check: its log names the error (and a bug report "
                       "with it is welcome); it retries with backoff",
    }
    fix = fixes.get(reason, "")
    if not fix and degraded.status is Status.TRUE:
        fix = {
            "InstanceUnreachable": f"allow traffic from the named kube-apiserver hosts to the Pods on {ports}",
            "CertificateExpiring": "renew the named certificate before it ends",
            "PartialFailure": "look at the failing endpoints' Pods",
            "SlowDiscovery": "the server answers slowly: look at its load",
            "DirectProbeFailed": "the operator cannot reach the Pods directly (a NetworkPolicy?); users are served",
            "DiscoveryStale": "the named instances cannot refresh this group/version's discovery from the server's "
                              "root /apis: look at the server's answer there and at those instances' logs",
            "OpenAPIUnavailable": "make the server answer /openapi/v3 (or /openapi/v2, with /openapi/v3 404) with "
                                  "200 and its schema; kube-apiserver re-reads it within a minute",
        }.get(degraded.reason, "")
    return fix


async def explain(name: str, pipeline: Pipeline, last_change: BackendChange | None = None) -> dict[str, Any] | None:
    """The trace as plain data (JSON); None when no such APIService is handled. The check is the
    controller's own pipeline, run traced: the verdict here is the one the controller would reach.
    `last_change`: the last change of backend this replica saw (core/backends)."""
    outcome = await pipeline.run(name, traced=True)
    if outcome is None:
        return None
    gathered, evidence = outcome.gathered, outcome.evidence
    spec = gathered.apiservice.get("spec") or {}
    ref = spec.get("service") or {}
    service, slices, resolution = gathered.service, gathered.slices, gathered.resolution
    plan = resolution.plan
    report: dict[str, Any] = {
        "name": name,
        "apiservice": {"group": spec.get("group") or "", "version": spec.get("version") or "",
                       "service": f"{ref.get('namespace') or ''}/{ref.get('name') or ''}" if ref else None,
                       "port": ref.get("port") or (443 if ref else None),
                       "insecureSkipTLSVerify": bool(spec.get("insecureSkipTLSVerify")),
                       "caBundle": [_cert(c) for c in plan.ca_certificates] if plan else []},
        "service": None if service is None else {
            "type": (service.get("spec") or {}).get("type") or "ClusterIP",
            "externalName": (service.get("spec") or {}).get("externalName"),
            "ports": (service.get("spec") or {}).get("ports") or []},
        "endpointSlices": [{"name": (s.get("metadata") or {}).get("name"), "ports": s.get("ports") or [],
                            "endpoints": [{"addresses": e.get("addresses") or [],
                                           "ready": (e.get("conditions") or {}).get("ready")}
                                          for e in s.get("endpoints") or []]} for s in slices],
        "resolution": None if resolution.verdict is None else asdict(resolution.verdict),
        "endpoints": [], "instances": [],
    }
    if plan is not None:
        handshakes = dict(zip(plan.targets, evidence.handshakes, strict=False))
        none = Handshake(None, None, ())
        report["endpoints"] = [_endpoint(result, handshakes.get(result.target, none), plan)
                               for result in sorted(evidence.probes, key=lambda p: p.target.endpoint)]
        report["instances"] = [{"instance": r.instance.endpoint, "outcome": str(r.outcome), "detail": r.detail,
                                "seconds": round(r.latency, 4), "gated": r.gated_now, "remembered": r.remembered}
                               for r in evidence.through]
        report["instancesVia"] = evidence.path.via if evidence.path else "off (--path-probe=off)"
        # what clients read: the group/version in each instance's aggregated discovery and /openapi/v3,
        # and the server's own answers to the documents kube-apiserver builds those from
        report["clientsView"] = [{"instance": v.instance.endpoint, "freshness": v.freshness and str(v.freshness),
                                  "resources": list(v.resources), "detail": v.detail,
                                  "openapi": v.openapi and str(v.openapi), "openapiDetail": v.openapi_detail}
                                 for v in (evidence.clients.instances if evidence.clients else ())]
        report["serverDocuments"] = [{"document": str(a.document), "endpoint": a.endpoint, "status": a.status,
                                      "seconds": round(a.seconds, 4), "contentType": a.content_type,
                                      "detail": a.detail, "serves": a.serves, "says": a.describe()}
                                     for a in (evidence.clients.server if evidence.clients else ())]
    kube = kube_available(outcome.apiservice)
    report["kubeApiserver"] = {"status": str(kube[0]) if kube[0] else None, "message": kube[1]}
    report["current"] = [c.to_api() for c in outcome.previous]
    available, degraded = outcome.conditions
    report["verdict"] = [available.to_api(), degraded.to_api()]
    report["fix"] = fix_for(available, degraded, plan, evidence.probes)
    report["lastBackendChange"] = None if last_change is None else {
        "from": last_change.old.describe(), "to": last_change.new.describe(), "manager": last_change.manager,
        "operation": last_change.operation, "time": last_change.at, "event": last_change.event.type,
        "message": last_change.event.message}
    return report


def _endpoint(result: ProbeResult, handshake: Handshake, plan: ProbePlan) -> dict[str, Any]:
    if plan.insecure_skip_tls_verify:
        tls = "not verified: insecureSkipTLSVerify"
    elif result.error is ErrorKind.TLS:
        tls = result.detail
    elif result.status_code is not None:
        tls = f"verified against spec.caBundle for {plan.server_name}"
    elif handshake.presented:
        tls = f"handshake completed; no HTTP answer followed ({result.detail})"
    else:
        tls = handshake.error or result.detail
    return {
        "endpoint": result.target.endpoint,
        "tcpSeconds": _round(handshake.tcp_seconds),
        "tlsSeconds": _round(handshake.tls_seconds),
        "presented": [_cert(c) for c in handshake.presented],
        "tls": tls,
        "httpStatus": result.status_code,
        "seconds": round(result.latency, 4),
        "ok": result.ok,
        "detail": result.detail,
        "body": result.body,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
