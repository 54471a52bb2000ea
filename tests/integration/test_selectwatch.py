"""SelectiveWatch against the real control plane, as the operator's own ServiceAccount (its RBAC is the
manifests'): only what a scope selects comes off the wire, a scope added later brings objects that existed
before it (kopf's watch never would: it resumes without listing), a dropped scope reports its objects gone,
and no scope at all sends no request."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from apiservice_operator.kube.client import Credentials
from apiservice_operator.kube.selectwatch import Resource, Scope, SelectiveWatch
from tests.builders import make_endpoint, make_service, make_slice
from tests.cluster.controlplane import ControlPlane
from tests.cluster.fixtures import new_namespace
from tests.cluster.kube import Kube

pytestmark = [pytest.mark.cluster]

SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", namespaced=True)
SERVICES = Resource("", "v1", "services", namespaced=True)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
Change = tuple[str, str | None, str, dict[str, Any] | None]


@pytest.fixture
async def credentials(operator_kubeconfig: Path) -> AsyncIterator[Credentials]:
    made = Credentials(str(operator_kubeconfig))
    await made.load()
    yield made
    await made.close()


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, kind: str, namespace: str | None, name: str, obj: dict[str, Any] | None) -> None:
        self.changes.append((kind, namespace, name, obj))


@contextlib.asynccontextmanager
async def running(watch: SelectiveWatch) -> AsyncIterator[None]:
    task = asyncio.create_task(watch.run())
    try:
        yield
    finally:
        task.cancel()
        async with asyncio.timeout(2):  # cancellation closes the open watches promptly
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(predicate: Callable[[], Any], what: str, timeout_steps: int = 200) -> None:
    for _ in range(timeout_steps):  # 50 ms each
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting: {what}")


def slice_(namespace: str, service: str, name: str, address: str = "10.250.0.9") -> dict[str, Any]:
    return make_slice(namespace, service, [make_endpoint(address)], name=name)


def service(namespace: str, name: str) -> dict[str, Any]:
    body = make_service(namespace, name)
    body["spec"]["clusterIP"] = "None"  # headless: the session's 256 service addresses are not ours to spend
    return body


def endpoints(obj: dict[str, Any]) -> dict[str, Any]:
    return {"endpoints": [e.get("addresses") for e in obj.get("endpoints") or []]}


async def test_a_label_selector_scope_brings_only_its_services_slices(
        kube: Kube, namespace: str, credentials: Credentials) -> None:
    elsewhere = new_namespace(kube, "t")
    for ns, svc, name in [(namespace, "a", "a-1"), (namespace, "b", "b-1"), (namespace, "c", "c-1"),
                          (elsewhere, "a", "a-1")]:
        kube.create(kube.slice_path(ns), slice_(ns, svc, name))
    seen = Recorder()
    # one item a page: the list follows its continue tokens
    watch = SelectiveWatch(SLICES, credentials, seen, name="endpointslices", project=endpoints, page_size=1)
    scope: Scope = (namespace, "kubernetes.io/service-name in (a,b)", "")
    watch.set_scopes([scope])
    async with running(watch):
        await asyncio.wait_for(watch.ready.wait(), 10)
        assert (watch.lists, watch.received) == (1, 2)
        assert set(watch.store.merged) == {(namespace, "a-1"), (namespace, "b-1")}
        kube.create(kube.slice_path(namespace), slice_(namespace, "b", "b-2"))
        kube.create(kube.slice_path(namespace), slice_(namespace, "c", "c-2"))
        kube.create(kube.slice_path(elsewhere), slice_(elsewhere, "a", "a-2"))
        kube.replace(kube.slice_path(namespace, "a-1"),
                     {**kube.get(kube.slice_path(namespace, "a-1")), "endpoints": [make_endpoint("10.250.0.8")]})
        kube.delete(kube.slice_path(namespace, "b-1"))
        await eventually(lambda: ("endpointslices", namespace, "b-1", None) in seen.changes, "b-1 gone")
        await asyncio.sleep(1)  # time enough for what should not come
        assert watch.store.merged == {(namespace, "a-1"): {"endpoints": [["10.250.0.8"]]},
                                      (namespace, "b-2"): {"endpoints": [["10.250.0.9"]]}}
        assert watch.received == 5  # 2 listed, b-2 added, a-1 modified, b-1 deleted: no c, nothing elsewhere
        assert {name for _, _, name, _ in seen.changes} == {"a-1", "b-1", "b-2"}
        assert watch.lists == 1 and watch.watch_requests == 1


async def test_a_scope_added_later_brings_what_existed_before_and_its_removal_reports_it_gone(
        kube: Kube, namespace: str, credentials: Credentials) -> None:
    for name in ("x", "y"):
        kube.create(kube.service_path(namespace), service(namespace, name))
    seen = Recorder()
    watch = SelectiveWatch(SERVICES, credentials, seen, name="services",
                           project=lambda obj: {"ports": obj["spec"].get("ports")})
    y: Scope = (namespace, "", "metadata.name=y")
    x: Scope = (namespace, "", "metadata.name=x")
    watch.set_scopes([y])
    async with running(watch):
        await asyncio.wait_for(watch.ready.wait(), 10)
        assert set(watch.store.merged) == {(namespace, "y")} and watch.received == 1
        watch.set_scopes([y, x])
        assert not watch.ready.is_set()  # x has not listed yet
        await asyncio.wait_for(watch.ready.wait(), 10)
        assert watch.get(namespace, "x") is not None
        assert [c[2] for c in seen.changes] == ["y", "x"] and watch.lists == 2
        watch.set_scopes([y])
        await eventually(lambda: seen.changes[-1] == ("services", namespace, "x", None), "x reported gone")
        assert watch.get(namespace, "x") is None and watch.get(namespace, "y") is not None
        # the object itself is still there: only the scope went
        assert kube.get(kube.service_path(namespace, "x"))["metadata"]["name"] == "x"


@pytest.mark.slow
async def test_a_watch_that_expired_while_down_relists_and_reports_what_changed_meanwhile(
        kube: Kube, namespace: str, credentials: Credentials, control_plane: ControlPlane) -> None:
    for svc, name in [("a", "a-1"), ("b", "b-1")]:
        kube.create(kube.slice_path(namespace), slice_(namespace, svc, name))
    seen = Recorder()
    watch = SelectiveWatch(SLICES, credentials, seen, name="endpointslices", project=endpoints)
    watch.set_scopes([(namespace, "kubernetes.io/service-name in (a,b)", "")])
    async with running(watch):
        await asyncio.wait_for(watch.ready.wait(), 10)
        seen.changes.clear()
        # The event loop is held while all of this happens (these calls block): our watch's connection
        # dies with kube-apiserver, and when it resumes, etcd no longer has the version it resumes from
        # and the new watch cache starts after it, as in test_faults' watch gap.
        control_plane.restart_apiserver()
        kube.delete(kube.slice_path(namespace, "b-1"))
        kube.create(kube.slice_path(namespace), slice_(namespace, "b", "b-2"))
        kube.replace(kube.slice_path(namespace, "a-1"),
                     {**kube.get(kube.slice_path(namespace, "a-1")), "endpoints": [make_endpoint("10.250.0.8")]})
        control_plane.compact_etcd()
        control_plane.restart_apiserver()
        await eventually(lambda: watch.lists == 2 and len(seen.changes) == 3, "a relist", timeout_steps=600)
        assert sorted(seen.changes, key=repr) == sorted([
            ("endpointslices", namespace, "a-1", {"endpoints": [["10.250.0.8"]]}),
            ("endpointslices", namespace, "b-1", None),
            ("endpointslices", namespace, "b-2", {"endpoints": [["10.250.0.9"]]})], key=repr)
        assert watch.ready.is_set() and watch.watch_requests >= 2
        # and it watches on: a change after the gap arrives as an event
        kube.delete(kube.slice_path(namespace, "a-1"))
        await eventually(lambda: seen.changes[-1] == ("endpointslices", namespace, "a-1", None), "a-1 gone")
        assert watch.lists == 2


def phase(obj: dict[str, Any]) -> dict[str, Any]:
    return {"phase": (obj.get("status") or {}).get("phase")}


async def test_only_terminating_namespaces_arrive(kube: Kube, credentials: Credentials) -> None:
    seen = Recorder()
    watch = SelectiveWatch(NAMESPACES, credentials, seen, name="namespaces", project=phase)
    watch.set_scopes([(None, "", "status.phase=Terminating")])
    async with running(watch):
        await asyncio.wait_for(watch.ready.wait(), 10)
        # earlier tests' namespaces stay Terminating (no namespace controller here): those are listed
        assert all(obj == {"phase": "Terminating"} for obj in watch.store.merged.values())
        before = watch.received
        active = new_namespace(kube, "t")
        kube.merge_patch(f"/api/v1/namespaces/{active}", {"metadata": {"labels": {"touched": "yes"}}})
        victim = f"victim-{uuid.uuid4().hex[:6]}"
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": victim}})
        kube.create(f"/api/v1/namespaces/{victim}/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"k": "v"}})
        kube.delete(f"/api/v1/namespaces/{victim}")
        await eventually(lambda: watch.get(None, victim) == {"phase": "Terminating"}, "the victim arrives")
        await asyncio.sleep(1)
        assert seen.changes[-1] == ("namespaces", None, victim, {"phase": "Terminating"})
        assert watch.get(None, active) is None and all(c[2] != active for c in seen.changes)
        assert watch.received == before + 1  # neither the Active namespace's creation nor its change


async def test_no_scope_sends_no_request(credentials: Credentials) -> None:
    watch = SelectiveWatch(SERVICES, credentials, Recorder(), name="services")
    async with running(watch):
        await asyncio.sleep(0.5)
        assert not watch.ready.is_set()  # not told its scopes yet: not synced either
        watch.set_scopes([])
        await asyncio.wait_for(watch.ready.wait(), 2)
        await asyncio.sleep(1)
    assert (watch.lists, watch.watch_requests, watch.received) == (0, 0, 0)
    assert credentials.http_pool is not None and credentials.http_pool.opened == 0  # not even a connection
