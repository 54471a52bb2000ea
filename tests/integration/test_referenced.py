"""The operator watches only what the APIServices reference (issue 26), counted from the wire: its
own counter of objects received per kind, on a dedicated operator whose selector takes only this
test's APIService. Unrelated Services and EndpointSlices (another namespace, and a neighbour in the
same namespace) never reach it; a Service created after its APIService is read; a changed reference
moves the watch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import builders
from tests.cluster.controlplane import free_port
from tests.cluster.fixtures import new_namespace
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.cluster.operator import OperatorProcess
from tests.integration.test_operations import metric

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
LABEL = {"ha-test": "referenced"}


def received(port: int, kind: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return metric(text, "apiservice_operator_watch_objects_received_total", kind=kind) or 0.0


@pytest.fixture
def own_operator(operator_kubeconfig: Path, tmp_path: Path) -> Iterator[int]:
    port = free_port("0.0.0.0")
    proc = OperatorProcess(operator_kubeconfig, tmp_path / "referenced.log", [
        "--metrics-port", str(port), "--selector", "ha-test=referenced", "--path-probe", "instances"]).start()
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 60,
                 "the operator ready", interval=0.5, tolerate=(httpx.TransportError,))
        yield port
    finally:
        code = proc.stop()
        print(f"===== operator (exit {code}) =====\n{proc.logs()[-3000:]}")


def unrelated(kube: Kube, namespace: str, count: int, prefix: str) -> None:
    for i in range(count):
        name = f"{prefix}-{i}"
        kube.create(Kube.service_path(namespace), builders.make_service(namespace, name))
        kube.create(Kube.slice_path(namespace), builders.make_slice(
            namespace, name, [builders.make_endpoint(f"10.250.1.{i % 250 + 1}")]))


def test_a_service_made_after_its_apiservice_is_read_and_unrelated_objects_never_arrive(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, own_operator: int,
) -> None:
    port = own_operator
    api = aggregated_api(servers=1)
    api.register_apiservice(labels=LABEL)  # before its Service exists
    wait_conditions(api, {OURS: ("False", "ServiceNotFound")}, 30)
    api.register_service()
    api.write_slice()
    wait_conditions(api, {OURS: ("True", "Passed")}, 30)
    before = {kind: received(port, kind) for kind in ("services", "endpointslices", "namespaces")}
    other = new_namespace(kube, "unrelated")
    unrelated(kube, other, 20, "elsewhere")  # another namespace
    unrelated(kube, api.namespace, 5, "neighbour")  # the same namespace, other Services
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": f"{other}-active"}})
    time.sleep(3)  # what would arrive arrives within milliseconds
    after = {kind: received(port, kind) for kind in ("services", "endpointslices", "namespaces")}
    print(f"\nobjects received before {before}, after 25 unrelated Services and EndpointSlices {after}")
    assert after == before, (before, after)
    # the referenced one still arrives: a removed endpoint is seen (one slice event)
    api.write_slice(addresses=[])
    wait_conditions(api, {OURS: ("False", "MissingEndpoints")}, 30)
    assert received(port, "endpointslices") == before["endpointslices"] + 1


def test_a_changed_reference_moves_the_watch(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, own_operator: int,
) -> None:
    port = own_operator
    first = aggregated_api(servers=1, service="first")
    second = aggregated_api(servers=1, service="second")
    for api in (first, second):
        api.register_service()
        api.write_slice()
    first.register_apiservice(labels=LABEL)
    wait_conditions(first, {OURS: ("True", "Passed")}, 30)
    second.stop()  # the Service it moves to has nothing listening: the verdict shows which it reads
    apiservice = kube.apiservice(first.name)
    apiservice["spec"]["service"]["name"] = "second"
    kube.replace(Kube.apiservice_path(first.name), apiservice)
    wait_conditions(first, {OURS: ("False", "FailedDiscoveryCheck")}, 30)
    moved = received(port, "endpointslices")
    first.write_slice(addresses=[])  # the old Service's slice: no longer watched
    time.sleep(3)
    assert received(port, "endpointslices") == moved
    second.write_slice(addresses=[])  # the new one's: watched
    wait_conditions(first, {OURS: ("False", "MissingEndpoints")}, 30)
    assert received(port, "endpointslices") == moved + 1
