"""Who an unavailable metrics API stalls, in pure terms: the HorizontalPodAutoscalers that cannot
compute a replica count because their metrics API fails. The HPA controller says so on the HPA:
condition ScalingActive=False, reason FailedGet<Kind>Metric, message wrapping the failed request
(pkg/controller/podautoscaler/metrics/client.go), e.g. "... unable to fetch metrics from resource
metrics API: the server is currently unable to handle the request (get pods.metrics.k8s.io)".

FailedGetResourceMetric also means things that are no outage (a container without a CPU request,
"missing request for cpu"; "no metrics returned from resource metrics API" while a Pod has no sample
yet): an HPA counts only where the message names this API's failed request, its group, or its Service.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apiservice_operator.core.blast import name_some

# the three groups whose one APIService each is read by the HPA controller (and which only one backend
# can serve at a time: installing KEDA or prometheus-adapter repoints the other's APIService)
METRICS_GROUPS: Mapping[str, str] = {
    "metrics.k8s.io": "resource",  # metrics-server: HPAs on CPU and memory, kubectl top, VPA
    "custom.metrics.k8s.io": "custom",  # prometheus-adapter, KEDA: Pods and Object metrics
    "external.metrics.k8s.io": "external",  # KEDA, prometheus-adapter: External metrics
}
CONDITION = "ScalingActive"
_STALLING = re.compile(r"stalling (\d+) HorizontalPodAutoscalers?")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9.-]*\.k8s\.io")


def is_metrics_group(group: str) -> bool:
    return group in METRICS_GROUPS


def service_host(apiservice: Mapping[str, Any]) -> str | None:
    """<name>.<namespace>.svc of the APIService's Service; None for a Local one."""
    ref = (apiservice.get("spec") or {}).get("service") or {}
    return f"{ref.get('name')}.{ref.get('namespace')}.svc" if ref.get("name") else None


def names_group(message: str, group: str) -> bool:
    """Whether `message` names `group`: as itself or as <resource>.<group> ("get pods.metrics.k8s.io"),
    but not as the tail of a sibling group (custom.metrics.k8s.io is not metrics.k8s.io)."""
    for token in _TOKEN.findall(message):
        token = token.rstrip(".")
        if token == group:
            return True
        head, dot, tail = token.partition(".")
        if dot and tail == group and head not in {g.partition(".")[0] for g in METRICS_GROUPS}:
            return True
    return False


def stalled_by(hpa: Mapping[str, Any], group: str, service_host: str | None = None) -> bool:
    """Whether this HPA cannot scale because requests to `group`'s API fail."""
    kind = METRICS_GROUPS.get(group)
    if kind is None:
        return False
    for cond in (hpa.get("status") or {}).get("conditions") or []:
        if cond.get("type") != CONDITION or cond.get("status") != "False":
            continue
        reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
        if not (reason.startswith("FailedGet") and reason.endswith("Metric")):
            return False
        return (f"unable to fetch metrics from {kind} metrics API" in message or names_group(message, group)
                or bool(service_host and service_host in message))
    return False


def stalled_autoscalers(hpas: Iterable[Mapping[str, Any]], group: str, service_host: str | None = None) -> list[str]:
    """namespace/name of each HPA that `group`'s outage stalls, sorted."""
    return sorted(f"{(h.get('metadata') or {}).get('namespace')}/{(h.get('metadata') or {}).get('name')}"
                  for h in hpas if stalled_by(h, group, service_host))


def describe_stalled(names: Sequence[str]) -> str:
    """The words added to an unavailable metrics API's message; "" when it stalls none."""
    return f"stalling {name_some(names, 'HorizontalPodAutoscaler')}" if names else ""


def stalled_count(message: str) -> int:
    """How many HPAs a message of ours says the API stalls (0 when it says none)."""
    found = _STALLING.search(message)
    return int(found.group(1)) if found else 0
