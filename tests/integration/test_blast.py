"""Blast radius on the real control plane with the session operator. There is no namespace
controller here, so the test writes NamespaceDeletionDiscoveryFailure on a Terminating namespace's
status as that controller would (make e2e-kind sees the real one do it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.cluster.operator import OperatorProcess
from tests.integration.test_operations import metric, scrape
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
OURS_TIMEOUT = 30


def stuck_terminating(kube: Kube, group_version: str) -> str:
    """A namespace holding a ConfigMap, deleted, its deletion waiting on group_version's discovery."""
    name = f"victim-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kube.create(f"/api/v1/namespaces/{name}/configmaps",
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"k": "v"}})
    kube.delete(f"/api/v1/namespaces/{name}")
    set_discovery_failure(kube, name, group_version)
    return name


def set_discovery_failure(kube: Kube, namespace: str, group_version: str | None) -> None:
    """What pkg/controller/namespace/deletion writes: True naming the failing group/versions, or
    False once discovery works again."""
    obj = kube.get(f"/api/v1/namespaces/{namespace}")
    assert obj["status"]["phase"] == "Terminating", obj["status"]
    failing = group_version is not None
    obj["status"]["conditions"] = [{
        "type": "NamespaceDeletionDiscoveryFailure", "status": "True" if failing else "False",
        "reason": "DiscoveryFailed" if failing else "ResourcesDiscovered",
        "message": (f"Discovery failed for some groups, 1 failing: unable to retrieve the complete list of server "
                    f"APIs: {group_version}: the server is currently unable to handle the request")
                   if failing else "All resources successfully discovered",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    kube.replace(f"/api/v1/namespaces/{namespace}/status", obj)


def test_an_unavailable_api_names_the_namespace_deletions_it_blocks(
    aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess, operator_port: int, kube: Kube,
) -> None:
    api = aggregated_api(1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    api.stop()
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT)
    gv = f"{api.group}/{api.version}"
    first, second = stuck_terminating(kube, gv), stuck_terminating(kube, gv)
    found = wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT,
                            messages={OURS: "blocking deletion of 2 namespaces: " + ", ".join(sorted([first, second]))})
    assert "connection refused" in found[OURS]["message"]
    assert metric(scrape(operator_port), "apiservice_operator_blocked_namespaces", name=api.name) == 2
    events = wait_for(lambda: [e for e in kube.get("/api/v1/namespaces/default/events")["items"]
                               if e["involvedObject"].get("name") == api.name
                               and "blocking deletion of 2 namespaces" in e["message"]], OURS_TIMEOUT, "the Event")
    assert events[0]["type"] == "Warning", events
    # the namespace controller found discovery complete again for one of them
    set_discovery_failure(kube, first, None)
    wait_conditions(api, {OURS: ("False", "FailedDiscoveryCheck")}, OURS_TIMEOUT,
                    messages={OURS: f"blocking deletion of 1 namespace: {second}$"})
    assert metric(scrape(operator_port), "apiservice_operator_blocked_namespaces", name=api.name) == 1
    for s in api.servers:
        s.start()
    found = wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    assert "blocking" not in found[OURS]["message"]
