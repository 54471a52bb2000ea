"""The controller's verdict and explain's are one check (check/pipeline.py): run both on the same
inputs, for every row of the decision table and of the user's-path table, and they must write and
show the same conditions. Plain data and scripted probes; no cluster."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from apiservice_operator.check.controller import Controller
from apiservice_operator.core.model import Condition, Handshake, Obj, ProbePlan, ProbeResult, Status, Target
from apiservice_operator.core.path import KUBERNETES_SERVICE
from apiservice_operator.core.settings import Settings
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker
from apiservice_operator.serve.explain import explain
from tests import builders
from tests.unit import test_decision_table as table
from tests.unit import test_userpath as userpath
from tests.unit.test_controller import World


class Identity:
    name, namespace = "probe", "apiservice-operator"

    def __init__(self, allowed: bool | None) -> None:
        self.allowed = allowed

    async def may_get(self, path: str) -> bool | None:
        return self.allowed


async def no_handshake(target: Target, server_name: str, budget: float) -> Handshake:
    return Handshake(None, None, ())


async def both(world: World, name: str, probe: Any, path: PathChecker | None) -> tuple[list[Obj], list[Obj]]:
    """(what the controller writes, what explain shows) for one check of `name`."""
    written: list[Sequence[Condition]] = []

    async def write(_: str, conditions: Sequence[Condition]) -> str:
        written.append(conditions)
        return "2"

    settings = Settings()
    controller = Controller(settings, world, probe, write, now=lambda: table.NOW, path=path)
    await controller.check(name)
    report = await explain(name, controller.pipeline.traced(probe, no_handshake))
    assert report is not None and len(written) == 1
    return [c.to_api() for c in written[0]], report["verdict"]


def scripted(outcomes: dict[str, tuple[Any, Any]]) -> Any:
    async def probe(plan: ProbePlan) -> list[ProbeResult]:
        results = []
        for target in plan.targets:
            outcome, detail = outcomes.get(target.endpoint, table.OK)
            if outcome == "ok":
                results.append(ProbeResult(target, True, float(detail)))
            else:
                results.append(ProbeResult(target, False, 0.01, outcome, str(detail)))
        return results
    return probe


@pytest.mark.parametrize("row", table.ROWS, ids=[r.id for r in table.ROWS])
async def test_controller_and_explain_agree_on_every_decision_table_row(row: table.Row) -> None:
    world = World()
    apiservice = dataclasses.replace(row).apiservice
    name = apiservice["metadata"]["name"]
    world.apiservices[name] = apiservice
    ref = (apiservice.get("spec") or {}).get("service") or {}
    if row.service is not None:
        world.services[(ref.get("namespace") or "", ref.get("name") or "")] = row.service
    world.slices_[(ref.get("namespace") or "", ref.get("name") or "")] = row.slices
    written, shown = await both(world, name, scripted(row.probes), None)
    assert written == shown
    # and both are the table's verdict
    assert [(c["status"], c["reason"]) for c in shown] == [row.available, row.degraded]


KUBERNETES_SLICE = {
    "metadata": {"name": "kubernetes"}, "addressType": "IPv4",
    "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    "endpoints": [{"addresses": [userpath.I1.host], "conditions": {"ready": True}},
                  {"addresses": [userpath.I2.host], "conditions": {"ready": True}}],
}
# the rows that start from a fresh operator: remembered answers and earlier verdicts are the path
# checker's and the controller's memory, which explain does not have by design
FRESH_PATH_ROWS = [r for r in userpath.ROWS if not r.memory and r.previous_reason is None]


@pytest.mark.parametrize("row", FRESH_PATH_ROWS, ids=[r.id for r in FRESH_PATH_ROWS])
async def test_controller_and_explain_agree_on_every_user_path_row(row: userpath.Row) -> None:
    plan = row.plan or userpath.PLAN
    world = World()
    conditions = [] if row.kube[0] is None else [{"type": "Available", "status": str(row.kube[0]),
                                                  "message": row.kube[1]}]
    apiservice = builders.make_apiservice(insecure_skip_tls_verify=plan.insecure_skip_tls_verify, conditions=conditions)
    name = apiservice["metadata"]["name"]
    world.apiservices[name] = apiservice
    world.services[("default", "demo")] = builders.make_service()
    world.slices_[("default", "demo")] = [builders.make_slice(
        endpoints=[builders.make_endpoint(t.host) for t in plan.targets])]
    world.slices_[KUBERNETES_SERVICE] = [KUBERNETES_SLICE]
    direct = {r.target: r for r in row.direct}
    through = {r.target: r for r in row.through}

    async def probe(asked: ProbePlan) -> list[ProbeResult]:
        await asyncio.sleep(0)
        if asked.path == "/livez":
            return [ProbeResult(t, True, 0.001, status_code=200) for t in asked.targets]
        answers = through if asked.server_name == "kubernetes.default.svc" else direct
        return [dataclasses.replace(answers[t], target=t) if t in answers else
                ProbeResult(t, False, 5.0, None, "no answer scripted") for t in asked.targets]

    path = PathChecker("instances", ClusterAccess("https://127.0.0.1:6443", None, True), world, probe,
                       Identity(row.identity_allowed), clock=lambda: 100.0)
    written, shown = await both(world, name, probe, path)
    assert written == shown
    assert [(c["status"], c["reason"]) for c in shown] == [row.available, row.degraded], shown
    assert Status(shown[0]["status"]) is Status(row.available[0])
