"""The core scenarios, on any cluster: our verdict, and kube-apiserver's beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from tests.cluster.kube import wait_conditions as wait

from e2e.backends import Api, Backend

OURS, DEGRADED, THEIRS = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", "Available"


@dataclass(frozen=True)
class Case:
    id: str
    servers: int
    break_it: Callable[[Api], None]
    ours: tuple[str, str]
    degraded: tuple[str, str]
    theirs: tuple[str, str]
    repair: Callable[[Api], None]


CASES = [
    Case("server-down", 1, lambda a: a.stop(0), ("False", "FailedDiscoveryCheck"), ("False", "Unavailable"),
         ("False", "FailedDiscoveryCheck"), lambda a: a.start(0)),
    Case("http-500", 1, lambda a: a.set_mode(0, mode="status", status=500), ("False", "FailedDiscoveryCheck"),
         ("False", "Unavailable"), ("False", "FailedDiscoveryCheck"), lambda a: a.set_mode(0, mode="healthy")),
    Case("hangs-past-the-budget", 1, lambda a: a.set_mode(0, mode="hang"), ("False", "FailedDiscoveryCheck"),
         ("False", "Unavailable"), ("False", "FailedDiscoveryCheck"), lambda a: a.set_mode(0, mode="healthy")),
    # kube-apiserver does not read the body: we are stricter
    Case("wrong-document", 1, lambda a: a.set_mode(0, mode="wrong-document"), ("False", "FailedDiscoveryCheck"),
         ("False", "Unavailable"), ("True", "Passed"), lambda a: a.set_mode(0, mode="healthy")),
    # kube-apiserver is satisfied by one endpoint: we report Degraded
    Case("one-of-two-broken", 2, lambda a: a.set_mode(0, mode="status", status=500), ("True", "Passed"),
         ("True", "PartialFailure"), ("True", "Passed"), lambda a: a.set_mode(0, mode="healthy")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_core_scenario(case: Case, backend: Backend, operator: None, namespace: str) -> None:
    api = backend.create(namespace, f"{namespace}.e2e.example.com", case.servers)
    wait(api, {OURS: ("True", "Passed"), DEGRADED: ("False", "AsExpected")}, 60)
    wait(api, {THEIRS: ("True", "Passed")}, 120)
    case.break_it(api)
    wait(api, {OURS: case.ours, DEGRADED: case.degraded}, 60)
    wait(api, {THEIRS: case.theirs}, 120)
    case.repair(api)
    wait(api, {OURS: ("True", "Passed"), DEGRADED: ("False", "AsExpected")}, 60)
    wait(api, {THEIRS: ("True", "Passed")}, 120)
