"""Who a failing metrics API stalls, from plain HorizontalPodAutoscalers as the HPA controller writes
them (pkg/controller/podautoscaler, v1.37), and how the HPAs are read: on demand, one list for every
metrics APIService, kept a while when a list fails."""

from __future__ import annotations

from typing import Any

import pytest

from apiservice_operator.core.consumers import (
    describe_stalled,
    names_group,
    service_host,
    stalled_autoscalers,
    stalled_count,
)
from apiservice_operator.core.decide import decide
from apiservice_operator.core.model import Condition, ConditionTypes, Resolution, Status, Verdict
from apiservice_operator.core.transitions import event_for_transition
from apiservice_operator.kube.autoscalers import KEEP_ON_ERROR, LIST_EVERY, AutoscalerReader
from tests.builders import make_apiservice

UNABLE = "the HPA was unable to compute the replica count: "
RESOURCE_DOWN = (UNABLE + "failed to get cpu utilization: unable to get metrics for resource cpu: unable to fetch "
                 "metrics from resource metrics API: the server is currently unable to handle the request "
                 "(get pods.metrics.k8s.io)")
RESOURCE_401 = (UNABLE + "failed to get cpu utilization: unable to get metrics for resource cpu: unable to fetch "
                "metrics from resource metrics API: Unauthorized")
NO_REQUEST = UNABLE + "failed to get cpu utilization: missing request for cpu in container app of Pod web-1"
NO_SAMPLE = (UNABLE + "failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned "
             "from resource metrics API")
CUSTOM_DOWN = (UNABLE + "unable to get metric requests_per_second: unable to fetch metrics from custom metrics API: "
               "the server is currently unable to handle the request (get pods.custom.metrics.k8s.io *)")
EXTERNAL_DOWN = (UNABLE + "unable to get external metric shop/queue_depth/nil: unable to fetch metrics from external "
                 "metrics API: the server could not find the requested resource "
                 "(get queue_depth.external.metrics.k8s.io)")


def hpa(name: str, reason: str, message: str, status: str = "False", namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "status": {"conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
        {"type": "ScalingActive", "status": status, "reason": reason, "message": message}]}}


@pytest.mark.parametrize(("obj", "group", "stalled"), [
    (hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN), "metrics.k8s.io", True),
    (hpa("web", "FailedGetResourceMetric", RESOURCE_401), "metrics.k8s.io", True),
    (hpa("web", "FailedGetContainerResourceMetric", RESOURCE_DOWN), "metrics.k8s.io", True),
    (hpa("web", "FailedGetResourceMetric", NO_REQUEST), "metrics.k8s.io", False),
    (hpa("web", "FailedGetResourceMetric", NO_SAMPLE), "metrics.k8s.io", False),
    (hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN, status="True"), "metrics.k8s.io", False),
    (hpa("web", "InvalidSelector", RESOURCE_DOWN), "metrics.k8s.io", False),
    (hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN), "custom.metrics.k8s.io", False),
    (hpa("api", "FailedGetPodsMetric", CUSTOM_DOWN), "custom.metrics.k8s.io", True),
    (hpa("api", "FailedGetObjectMetric", CUSTOM_DOWN), "custom.metrics.k8s.io", True),
    (hpa("api", "FailedGetPodsMetric", CUSTOM_DOWN), "metrics.k8s.io", False),
    (hpa("q", "FailedGetExternalMetric", EXTERNAL_DOWN), "external.metrics.k8s.io", True),
    (hpa("q", "FailedGetExternalMetric", EXTERNAL_DOWN), "metrics.k8s.io", False),
    (hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN), "wardle.example.com", False),
    ({"metadata": {"namespace": "shop", "name": "new"}}, "metrics.k8s.io", False),
], ids=["resource-503", "resource-401", "container-resource", "no-cpu-request", "no-sample-yet", "scaling-active",
        "other-reason", "resource-is-not-custom", "custom-pods", "custom-object", "custom-is-not-resource",
        "external", "external-is-not-resource", "not-a-metrics-group", "no-status"])
def test_an_hpa_counts_only_where_its_message_names_a_failed_request_to_this_api(
    obj: dict[str, Any], group: str, stalled: bool,
) -> None:
    assert stalled_autoscalers([obj], group) == (["shop/" + obj["metadata"]["name"]] if stalled else [])


def test_a_group_is_named_as_itself_or_a_resource_of_it_never_as_a_siblings_tail() -> None:
    assert names_group("(get pods.metrics.k8s.io)", "metrics.k8s.io")
    assert names_group("metrics.k8s.io/v1beta1: stale", "metrics.k8s.io")
    assert not names_group("(get pods.custom.metrics.k8s.io *)", "metrics.k8s.io")
    assert not names_group("custom.metrics.k8s.io/v1beta2", "metrics.k8s.io")
    assert names_group("(get pods.custom.metrics.k8s.io *)", "custom.metrics.k8s.io")


def test_an_hpa_whose_message_names_the_service_counts() -> None:
    svc = make_apiservice("metrics.k8s.io", "v1beta1", service_namespace="kube-system", service_name="metrics-server")
    host = service_host(svc)
    assert host == "metrics-server.kube-system.svc"
    obj = hpa("web", "FailedGetResourceMetric", UNABLE + f"dial tcp: lookup {host}: no such host")
    assert stalled_autoscalers([obj], "metrics.k8s.io", host) == ["shop/web"]


def test_describe_stalled_counts_and_names_a_few_and_the_count_reads_back() -> None:
    assert describe_stalled([]) == ""
    assert describe_stalled(["shop/web"]) == "stalling 1 HorizontalPodAutoscaler: shop/web"
    two = describe_stalled(["shop/web", "shop/api"])
    assert two == "stalling 2 HorizontalPodAutoscalers: shop/api, shop/web" and stalled_count(two) == 2
    many = describe_stalled([f"ns/h{i:02}" for i in range(12)])
    assert many.endswith("and 2 more") and stalled_count(f"down; {many}") == 12
    assert stalled_count("all fine") == 0


def test_an_unavailable_metrics_api_names_the_hpas_it_stalls_after_the_namespaces_it_blocks() -> None:
    types = ConditionTypes()
    down = Resolution(verdict=Verdict(Status.FALSE, "MissingEndpoints", "no endpoints"))
    available, _ = decide(down, [], [], "2026-01-01T00:00:00Z", types, 5.0, blocked=["gone"],
                          stalled=["shop/web", "shop/api"])
    assert available.message == ("no endpoints; blocking deletion of 1 namespace: gone; "
                                 "stalling 2 HorizontalPodAutoscalers: shop/api, shop/web")
    local = Resolution(verdict=Verdict(Status.TRUE, "Local", "Local APIServices are always available"))
    available, _ = decide(local, [], [], "2026-01-01T00:00:00Z", types, 5.0, stalled=["shop/web"])
    assert "stalling" not in available.message


def test_more_stalled_hpas_is_an_event_though_nothing_else_moved() -> None:
    types = ConditionTypes()
    degraded = Condition(types.degraded, Status.FALSE, "Unavailable", "not available", "t")
    one = Condition(types.available, Status.FALSE, "MissingEndpoints", "none; stalling 1 HorizontalPodAutoscaler: a/b",
                    "t")
    two = Condition(types.available, Status.FALSE, "MissingEndpoints",
                    "none; stalling 2 HorizontalPodAutoscalers: a/b, a/c", "t")
    event = event_for_transition({one.type: one, degraded.type: degraded}, two, degraded)
    assert event is not None and (event.type, event.reason) == ("Warning", "StallingAutoscalers")
    assert "a/c" in event.message
    assert event_for_transition({two.type: two, degraded.type: degraded}, one, degraded) is None


class Pages:
    """kube-apiserver's paged list, scripted: each call returns the next page or raises."""

    def __init__(self, *pages: dict[str, Any] | Exception) -> None:
        self.pages = list(pages)
        self.queries: list[list[tuple[str, str]]] = []

    async def __call__(self, query: list[tuple[str, str]]) -> dict[str, Any]:
        self.queries.append(query)
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page


async def test_one_list_serves_every_metrics_api_for_a_while_and_pages_are_followed() -> None:
    now = [0.0]
    pages = Pages({"items": [hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN)], "metadata": {"continue": "t1"}},
                  {"items": [hpa("api", "FailedGetPodsMetric", CUSTOM_DOWN)], "metadata": {}},
                  {"items": [], "metadata": {}})
    reader = AutoscalerReader(fetch=pages, clock=lambda: now[0])
    assert await reader.stalled("metrics.k8s.io", None) == ["shop/web"]
    assert await reader.stalled("custom.metrics.k8s.io", None) == ["shop/api"]
    assert reader.lists == 1 and pages.queries[1] == [("limit", "500"), ("continue", "t1")]
    now[0] = LIST_EVERY
    assert await reader.stalled("metrics.k8s.io", None) == []  # listed again: it scales now
    assert reader.lists == 2


async def test_a_failed_list_keeps_the_last_one_a_while_then_names_none() -> None:
    now = [0.0]
    pages = Pages({"items": [hpa("web", "FailedGetResourceMetric", RESOURCE_DOWN)]},
                  RuntimeError("403 forbidden"), RuntimeError("403 forbidden"))
    reader = AutoscalerReader(fetch=pages, clock=lambda: now[0])
    assert await reader.stalled("metrics.k8s.io", None) == ["shop/web"]
    now[0] = LIST_EVERY
    assert await reader.stalled("metrics.k8s.io", None) == ["shop/web"]
    assert reader.problem is not None and "403" in reader.problem
    now[0] = KEEP_ON_ERROR
    assert await reader.stalled("metrics.k8s.io", None) == []
