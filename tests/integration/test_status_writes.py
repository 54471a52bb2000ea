"""write_conditions against kube-apiserver, as the operator's ServiceAccount: server-side apply of
our conditions only, on kept connections (pool.py) rather than one per write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiservice_operator.core.model import Condition, Status, WriteForbidden
from apiservice_operator.kube.client import Credentials, write_conditions
from tests import builders
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kube import Kube
from tests.cluster.operator import service_account_kubeconfig

pytestmark = [pytest.mark.cluster]
OURS = "apiservice-operator.io/Available"


@pytest.fixture
def apiservices(kube: Kube) -> Iterator[list[str]]:
    names: list[str] = []
    for i in range(40):
        body = builders.make_apiservice(f"w{i}.writes.example.com", "v1", service_namespace="default",
                                        service_name="nowhere", ca_bundle=None, insecure_skip_tls_verify=True)
        kube.create(Kube.apiservice_path(), body)
        names.append(body["metadata"]["name"])
    yield names
    for name in names:
        kube.delete(Kube.apiservice_path(name))


def passed(message: str) -> Condition:
    return Condition(OURS, Status.TRUE, "Passed", message, "2026-11-29T00:00:00Z")


async def test_writes_apply_our_condition_and_reuse_connections(
        kube: Kube, operator_kubeconfig: Path, apiservices: list[str]) -> None:
    credentials = Credentials(str(operator_kubeconfig))
    await credentials.load()
    assert credentials.http_pool is not None
    try:
        burst = await asyncio.gather(*(write_conditions(credentials, name, [passed(name)]) for name in apiservices))
        after_burst = credentials.http_pool.opened
        one_by_one = [await write_conditions(credentials, name, [passed(f"again {name}")]) for name in apiservices]
        opened = credentials.http_pool.opened
    finally:
        await credentials.close()
    # each write answers the resourceVersion it made (the controller's memory waits for it on the watch)
    assert all(rv and rv.isdigit() for rv in [*burst, *one_by_one]), (burst, one_by_one)
    assert 1 <= after_burst <= len(apiservices)
    assert opened == after_burst  # the writes one at a time found a kept connection every time
    for name in apiservices:
        # the session's operator (same field manager) may have applied its own verdict since: the
        # condition is ours either way, and kube-apiserver's own is left alone by the apply
        conditions = {c["type"] for c in kube.get(Kube.apiservice_path(name))["status"]["conditions"]}
        assert {OURS, "Available"} <= conditions


async def test_write_to_a_deleted_apiservice_returns_none(operator_kubeconfig: Path) -> None:
    credentials = Credentials(str(operator_kubeconfig))
    await credentials.load()
    try:
        assert await write_conditions(credentials, "v1.gone.example.com", [passed("gone")]) is None
    finally:
        await credentials.close()


async def test_write_without_rbac_says_which_permission_is_missing(
        control_plane: ControlPlane, apiservices: list[str], tmp_path: Path) -> None:
    # the probe identity: a ServiceAccount with no RBAC at all
    kubeconfig = service_account_kubeconfig(control_plane, tmp_path / "probe.kubeconfig",
                                            name="apiservice-operator-probe")
    credentials = Credentials(str(kubeconfig))
    await credentials.load()
    try:
        with pytest.raises(WriteForbidden, match="verb=patch on resource=apiservices/status"):
            await write_conditions(credentials, apiservices[0], [passed("nope")])
    finally:
        await credentials.close()
