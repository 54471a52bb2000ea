"""API Priority and Fairness as a test's throttle: a FlowSchema matching the operator's
ServiceAccount for some requests only, sent to a priority level of zero seats that rejects with
429. kube-apiserver's own machinery refuses them: nothing here stands in for the API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.cluster.kube import Kube, wait_for
from tests.cluster.operator import SA_NAME, SA_NAMESPACE

FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"


def reject(kube: Kube, resource_rule: dict[str, Any]) -> tuple[str, Callable[[], None]]:
    """Starts rejecting the operator's requests that `resource_rule` (a FlowSchema resourceRule)
    matches, once kube-apiserver has taken the FlowSchema in; returns the priority level's name (for
    apiserver_flowcontrol_rejected_requests_total) and a function that ends it, safe to call twice."""
    name = f"throttle-{uuid.uuid4().hex[:6]}"
    kube.create(f"{FLOWCONTROL}/prioritylevelconfigurations", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}})
    kube.create(f"{FLOWCONTROL}/flowschemas", {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
        "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 50,
                 "distinguisherMethod": {"type": "ByUser"},
                 "rules": [{"subjects": [{"kind": "ServiceAccount",
                                          "serviceAccount": {"name": SA_NAME, "namespace": SA_NAMESPACE}}],
                            "resourceRules": [resource_rule]}]}})

    def taken_in() -> bool:
        # the config controller marks a FlowSchema it has digested: Dangling False (its level exists)
        conditions = (kube.get(f"{FLOWCONTROL}/flowschemas/{name}").get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Dangling" and c.get("status") == "False" for c in conditions)

    wait_for(taken_in, 30, f"kube-apiserver to take FlowSchema {name} in", interval=0.2)
    ended = False

    def end() -> None:
        nonlocal ended
        if not ended:
            ended = True
            kube.delete(f"{FLOWCONTROL}/flowschemas/{name}")
            kube.delete(f"{FLOWCONTROL}/prioritylevelconfigurations/{name}")

    return name, end


def rejected(kube: Kube, priority_level: str) -> float:
    """How many requests kube-apiserver's APF refused at `priority_level` so far."""
    total = 0.0
    for line in kube.http.get("/metrics").text.splitlines():
        if line.startswith("apiserver_flowcontrol_rejected_requests_total{") and \
                f'priority_level="{priority_level}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
