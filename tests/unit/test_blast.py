"""Blast radius, from plain namespaces: which Terminating namespaces wait on which group/version,
and what an unavailable API's message says about them."""

from __future__ import annotations

from typing import Any

import pytest

from apiservice_operator.core.blast import apiservice_name, blocking_group_versions, describe_blocked, group_version
from apiservice_operator.core.decide import decide
from apiservice_operator.core.model import ConditionTypes, Resolution, Status, Verdict
from tests.builders import make_apiservice

# as the namespace controller writes it (pkg/controller/namespace/deletion, v1.37)
MESSAGE = ("Discovery failed for some groups, 2 failing: unable to retrieve the complete list of server APIs: "
           "metrics.k8s.io/v1beta1: stale GroupVersion discovery: metrics.k8s.io/v1beta1, "
           "wardle.example.com/v1alpha1: the server is currently unable to handle the request")


def namespace(phase: str = "Terminating", status: str = "True", message: str = MESSAGE) -> dict[str, Any]:
    return {"metadata": {"name": "a"}, "status": {"phase": phase, "conditions": [
        {"type": "NamespaceDeletionDiscoveryFailure", "status": status, "reason": "DiscoveryFailed",
         "message": message}]}}


@pytest.mark.parametrize(("obj", "blocking"), [
    (namespace(), ("metrics.k8s.io/v1beta1", "wardle.example.com/v1alpha1")),
    (namespace(phase="Active"), ()),
    (namespace(status="False"), ()),
    (namespace(message="All resources successfully discovered"), ()),
    ({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}}, ()),
], ids=["terminating-and-waiting", "active", "condition-false", "no-group-named", "no-conditions"])
def test_only_terminating_namespaces_waiting_on_discovery_block(obj: dict[str, Any], blocking: tuple[str, ...]) -> None:
    assert blocking_group_versions(obj) == blocking


def test_group_version_and_apiservice_name_are_inverse() -> None:
    assert group_version(make_apiservice("metrics.k8s.io", "v1beta1")) == "metrics.k8s.io/v1beta1"
    assert apiservice_name("metrics.k8s.io/v1beta1") == "v1beta1.metrics.k8s.io"
    assert apiservice_name("v1") == "v1"


def test_describe_blocked_counts_and_names_a_few() -> None:
    assert describe_blocked([]) == ""
    assert describe_blocked(["b", "a"]) == "blocking deletion of 2 namespaces: a, b"
    assert describe_blocked(["only"]) == "blocking deletion of 1 namespace: only"
    many = describe_blocked([f"n{i:02}" for i in range(12)])
    assert many.startswith("blocking deletion of 12 namespaces: n00, n01") and many.endswith("and 2 more")


def test_an_unavailable_api_says_which_deletions_it_blocks_and_a_healthy_one_does_not() -> None:
    types = ConditionTypes()
    down = Resolution(verdict=Verdict(Status.FALSE, "MissingEndpoints", "no endpoints"))
    available, _ = decide(down, [], [], "2026-01-01T00:00:00Z", types, 5.0, blocked=["b", "a", "c"])
    assert available.message == "no endpoints; blocking deletion of 3 namespaces: a, b, c"
    local = Resolution(verdict=Verdict(Status.TRUE, "Local", "Local APIServices are always available"))
    available, _ = decide(local, [], [], "2026-01-01T00:00:00Z", types, 5.0, blocked=["a"])
    assert "blocking" not in available.message


def test_an_outage_that_starts_blocking_more_namespaces_is_an_event_though_nothing_else_moved() -> None:
    from apiservice_operator.core.model import Condition
    from apiservice_operator.core.transitions import event_for_transition

    types = ConditionTypes()
    degraded = Condition(types.degraded, Status.FALSE, "Unavailable", "not available", "t")
    before = Condition(types.available, Status.FALSE, "FailedDiscoveryCheck", "down", "t")
    now = Condition(types.available, Status.FALSE, "FailedDiscoveryCheck", "down; blocking deletion of 1 namespace: a",
                    "t")
    event = event_for_transition({before.type: before, degraded.type: degraded}, now, degraded)
    assert event is not None and (event.type, event.reason) == ("Warning", "BlockingNamespaceDeletion")
    assert "blocking deletion of 1 namespace: a" in event.message
    assert event_for_transition({now.type: now, degraded.type: degraded}, before, degraded) is None
