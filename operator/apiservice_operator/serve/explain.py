"""explain: one fresh check of one APIService, hop by hop, with the same resolve, the same prober,
the same path checker and the same decide as the verdicts (a second trace that could disagree with
them would be worse than none). Served read-only on the operator's port; `kubectl apiservices
explain NAME` fetches it through kube-apiserver's service proxy, so it runs where the Pods are."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from apiservice_operator.check.controller import Inputs
from apiservice_operator.core.blast import group_version
from apiservice_operator.core.decide import decide, our_conditions
from apiservice_operator.core.model import Certificate, Condition, ErrorKind, ProbePlan, ProbeResult, Status
from apiservice_operator.core.path import PathEvidence, PathResult
from apiservice_operator.core.resolve import resolve
from apiservice_operator.core.settings import Settings
from apiservice_operator.probing.pathcheck import PathChecker, kube_available
from apiservice_operator.probing.probe import Handshake, inspect_tls

Inspect = Callable[..., Awaitable[Handshake]]


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
        "AwaitingKubeAPIServer": "nothing yet: kube-apiserver re-checks within seconds; explain again",
    }
    fix = fixes.get(reason, "")
    if not fix and degraded.status is Status.TRUE:
        fix = {
            "InstanceUnreachable": f"allow traffic from the named kube-apiserver hosts to the Pods on {ports}",
            "CertificateExpiring": "renew the named certificate before it ends",
            "PartialFailure": "look at the failing endpoints' Pods",
            "SlowDiscovery": "the server answers slowly: look at its load",
            "DirectProbeFailed": "the operator cannot reach the Pods directly (a NetworkPolicy?); users are served",
        }.get(degraded.reason, "")
    return fix


async def explain(name: str, inputs: Inputs, settings: Settings, probe: Callable[[ProbePlan],
                  Awaitable[list[ProbeResult]]], checker: PathChecker | None, now: str,
                  inspect: Inspect = inspect_tls) -> dict[str, Any] | None:
    """The trace as plain data (JSON); None when no such APIService is handled."""
    apiservice = inputs.apiservice(name)
    if apiservice is None:
        return None
    spec = apiservice.get("spec") or {}
    ref = spec.get("service") or {}
    namespace, service_name = ref.get("namespace") or "", ref.get("name") or ""
    service = inputs.service(namespace, service_name) if ref else None
    slices = inputs.slices(namespace, service_name) if ref else []
    resolution = resolve(apiservice, service, slices)
    plan = resolution.plan
    report: dict[str, Any] = {
        "name": name,
        "apiservice": {"group": spec.get("group") or "", "version": spec.get("version") or "",
                       "service": f"{namespace}/{service_name}" if ref else None,
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
    probes: list[ProbeResult] = []
    evidence: PathEvidence | None = None
    if plan is not None:
        budget = settings.probe_timeout
        asks: list[Awaitable[Any]] = [probe(plan)]
        asks += [inspect(t, plan.server_name, budget) for t in plan.targets]
        if checker is not None:
            asks.append(checker.ask(plan))
        answers = await asyncio.gather(*asks)
        probes = answers[0]
        handshakes: list[Handshake] = answers[1:1 + len(plan.targets)]
        through: list[PathResult] = answers[-1] if checker is not None else []
        if checker is not None:
            evidence = await checker.evidence(apiservice, plan, tuple(through))
        for result, handshake in zip(sorted(probes, key=lambda p: p.target.endpoint), handshakes, strict=False):
            report["endpoints"].append(_endpoint(result, handshake, plan))
        report["instances"] = [{"instance": r.instance.endpoint, "outcome": str(r.outcome), "detail": r.detail,
                                "seconds": round(r.latency, 4)} for r in through]
        report["instancesVia"] = evidence.via if evidence else "off (--path-probe=off)"
    kube = kube_available(apiservice)
    report["kubeApiserver"] = {"status": str(kube[0]) if kube[0] else None, "message": kube[1]}
    previous = our_conditions(apiservice.get("status"), settings.types)
    report["current"] = [c.to_api() for c in previous]
    available, degraded = decide(resolution, probes, previous, now, settings.types, settings.probe_timeout,
                                 evidence, settings.cert_expiry_warning * 86400,
                                 inputs.blocked_namespaces(group_version(apiservice)))
    report["verdict"] = [available.to_api(), degraded.to_api()]
    report["fix"] = fix_for(available, degraded, plan, probes)
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
