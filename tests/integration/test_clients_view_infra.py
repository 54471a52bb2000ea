"""The suite's test servers serve what real extension servers serve besides their group/version:
root /apis (aggregated discovery v2 when asked for it) and /openapi/v2. So kube-apiserver's clients'
view of a healthy test server is healthy too (DESIGN 10): its group/version listed Current with its
resources in kube-apiserver's aggregated discovery, and present in kube-apiserver's /openapi/v3
(converted from the server's v2). The clients'-view checks build on this: a healthy server must not
look Stale or without OpenAPI because the test server lacked what real ones have."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster]

V2_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def discovery_entry(kube: Kube, group: str, version: str) -> dict[str, Any] | None:
    response = kube.http.get("/apis", headers={"Accept": V2_ACCEPT})
    response.raise_for_status()
    assert "as=APIGroupDiscoveryList" in response.headers["content-type"], response.headers["content-type"]
    for item in response.json()["items"]:
        if item["metadata"]["name"] == group:
            return next((v for v in item.get("versions") or [] if v["version"] == version), None)
    return None


def test_a_healthy_test_server_is_current_in_aggregated_discovery_and_present_in_openapi_v3(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube,
) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {"Available": ("True", "Passed")}, 60)

    def current() -> dict[str, Any] | None:
        entry = discovery_entry(kube, api.group, api.version)
        # freshness is omitted when Current (its zero value)
        if entry and entry.get("freshness", "Current") == "Current" and entry.get("resources"):
            return entry
        return None

    entry = wait_for(current, 90, "the group/version Current with resources in aggregated discovery", interval=1)
    assert [r["resource"] for r in entry["resources"]] == ["widgets"]

    def in_openapi() -> bool:
        paths = kube.http.get("/openapi/v3").json().get("paths") or {}
        return f"apis/{api.group}/{api.version}" in paths

    wait_for(in_openapi, 90, "the group/version in kube-apiserver's /openapi/v3", interval=1)
    document = kube.http.get(f"/openapi/v3/apis/{api.group}/{api.version}")
    assert document.status_code == 200, document.text[:300]
