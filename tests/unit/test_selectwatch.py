"""SelectiveWatch's pure parts with plain data: the reconcile plan, the request parameters, the store that
merges the scopes (a relist's diff, a dropped scope's deletions), and the handling of watch lines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from apiservice_operator.kube.client import Credentials
from apiservice_operator.kube.selectwatch import (
    Resource,
    Scope,
    SelectiveWatch,
    Store,
    _Expired,
    _Failed,
    key_of,
    plan,
    request_params,
)

SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", namespaced=True)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
AB: Scope = ("demo", "kubernetes.io/service-name in (a,b)", "")
BC: Scope = ("demo", "kubernetes.io/service-name in (b,c)", "")


def obj(name: str, version: int, namespace: str | None = "demo", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(version)}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta, **extra}


def listed(*objs: dict[str, Any]) -> dict[tuple[str | None, str], tuple[int, dict[str, Any]]]:
    return {key: (version, o) for o in objs for key, version in [key_of(o)]}


@pytest.mark.parametrize(("running", "wanted", "start", "stop"), [
    ([], [], set(), set()),
    ([], [AB], {AB}, set()),
    ([AB], [AB], set(), set()),  # unchanged: its watch goes on, no relist
    ([AB], [BC], {BC}, {AB}),  # a selector that changed is a new scope
    ([AB, BC], [], set(), {AB, BC}),
])
def test_plan(running: list[Scope], wanted: list[Scope], start: set[Scope], stop: set[Scope]) -> None:
    assert plan(running, wanted) == (start, stop)


def test_paths_and_params() -> None:
    assert SLICES.path("demo") == "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    assert SLICES.path(None) == "/apis/discovery.k8s.io/v1/endpointslices"
    assert NAMESPACES.path(None) == "/api/v1/namespaces"
    assert request_params(AB, limit="500", **{"continue": ""}) == {
        "labelSelector": "kubernetes.io/service-name in (a,b)", "limit": "500"}
    assert request_params((None, "", "status.phase=Terminating"), watch="1", resourceVersion="7") == {
        "fieldSelector": "status.phase=Terminating", "watch": "1", "resourceVersion": "7"}


def test_key_of() -> None:
    assert key_of(obj("x", 12)) == (("demo", "x"), 12)
    assert key_of(obj("ns", 3, namespace=None)) == ((None, "ns"), 3)
    assert key_of({"metadata": {"name": "x", "resourceVersion": "opaque"}}) == ((None, "x"), -1)


def test_an_object_two_scopes_hold_is_gone_only_when_neither_does() -> None:
    store = Store()
    assert store.put(AB, ("demo", "b"), {"v": 1}, 5)
    assert not store.put(BC, ("demo", "b"), {"v": 1}, 5)  # the same object through another scope: no change
    assert not store.drop(AB, ("demo", "b"))
    assert store.merged == {("demo", "b"): {"v": 1}}
    assert store.drop(BC, ("demo", "b"))
    assert store.merged == {}
    assert not store.drop(BC, ("demo", "b"))  # not held: nothing to report


def test_an_older_copy_from_another_scope_does_not_replace_a_newer_one() -> None:
    store = Store()
    assert store.put(AB, ("demo", "b"), {"v": 2}, 9)
    assert not store.put(BC, ("demo", "b"), {"v": 1}, 5)  # BC's list was taken before AB's event
    assert store.merged[("demo", "b")] == {"v": 2}
    assert store.put(BC, ("demo", "b"), {"v": 3}, 11)
    assert store.merged[("demo", "b")] == {"v": 3}


def test_a_change_the_projection_does_not_keep_is_no_change() -> None:
    store = Store()
    assert store.put(AB, ("demo", "a"), {"ports": [443]}, 1)
    assert not store.put(AB, ("demo", "a"), {"ports": [443]}, 2)


def test_a_relist_reports_what_came_changed_and_went() -> None:
    store = Store()
    assert store.replace(AB, listed(obj("a", 1), obj("b", 2))) == [
        (("demo", "a"), obj("a", 1)), (("demo", "b"), obj("b", 2))]
    # while the watch was down: a changed, b deleted, a2 created
    changes = store.replace(AB, listed(obj("a", 5, ready=False), obj("a2", 6)))
    assert sorted(changes, key=repr) == sorted([
        (("demo", "a"), obj("a", 5, ready=False)), (("demo", "a2"), obj("a2", 6)), (("demo", "b"), None)], key=repr)
    assert store.replace(AB, listed(obj("a", 5, ready=False), obj("a2", 6))) == []  # nothing new


def test_a_relist_keeps_what_another_scope_holds() -> None:
    store = Store()
    store.replace(AB, listed(obj("b", 2)))
    store.replace(BC, listed(obj("b", 2)))
    assert store.replace(AB, listed()) == []
    assert store.merged == {("demo", "b"): obj("b", 2)}


def test_a_dropped_scope_reports_only_what_no_other_scope_holds() -> None:
    store = Store()
    store.replace(AB, listed(obj("a", 1), obj("b", 2)))
    store.replace(BC, listed(obj("b", 2), obj("c", 3)))
    assert store.remove_scope(AB) == [(("demo", "a"), None)]
    assert AB not in store.scopes
    assert sorted(store.remove_scope(BC), key=repr) == [(("demo", "b"), None), (("demo", "c"), None)]
    assert store.merged == {} and store.remove_scope(BC) == []


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str, dict[str, Any] | None]] = []

    def __call__(self, kind: str, namespace: str | None, name: str, o: dict[str, Any] | None) -> None:
        self.changes.append((kind, namespace, name, o))


def line(kind: str, o: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "object": o})


def slim(o: dict[str, Any]) -> dict[str, Any] | None:
    """A projection that keeps the endpoints and drops slices of no service."""
    return {"endpoints": o.get("endpoints")} if o.get("endpoints") is not None else None


def test_watch_lines() -> None:
    seen = Recorder()
    watch = SelectiveWatch(SLICES, Credentials(None), seen, name="endpointslices", project=slim)
    assert watch._apply(AB, line("ADDED", obj("a", 3, endpoints=[1])), "2") == "3"
    assert watch._apply(AB, line("MODIFIED", obj("a", 4, endpoints=[1], note="x")), "3") == "4"  # projected alike
    assert watch._apply(AB, line("BOOKMARK", {"metadata": {"resourceVersion": "9"}}), "4") == "9"
    assert watch._apply(AB, line("MODIFIED", obj("a", 10)), "9") == "10"  # projection says no: gone
    assert watch._apply(AB, line("DELETED", obj("b", 11)), "10") == "11"  # never held: nothing to report
    assert seen.changes == [("endpointslices", "demo", "a", {"endpoints": [1]}), ("endpointslices", "demo", "a", None)]
    assert (watch.received, watch.bookmarks) == (4, 1)
    with pytest.raises(_Expired):
        watch._apply(AB, line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"}), "11")
    with pytest.raises(_Failed):
        watch._apply(AB, line("ERROR", {"kind": "Status", "code": 500}), "11")
    for bad in ("{not json", '{"type": "ADDED"}', line("SURPRISE", obj("a", 12)), '["ADDED"]',
                line("ADDED", {"metadata": {}})):
        with pytest.raises(ValueError):
            watch._apply(AB, bad, "11")
    assert watch.received == 4


def test_a_cluster_scoped_resource_takes_no_namespace() -> None:
    watch = SelectiveWatch(NAMESPACES, Credentials(None), Recorder(), name="namespaces")
    with pytest.raises(ValueError):
        watch.set_scopes([("demo", "", "")])


async def test_scope_changes_are_debounced_and_an_empty_set_sends_nothing() -> None:
    # Not logged in: a scope that starts fails its first list at once, counted, before any network.
    watch = SelectiveWatch(SLICES, Credentials(None), Recorder(), name="endpointslices", debounce=0.05)
    task = asyncio.create_task(watch.run())
    try:
        watch.set_scopes([])
        await asyncio.wait_for(watch.ready.wait(), 1)
        assert (watch.lists, watch.watch_requests) == (0, 0)
        for _ in range(50):  # a burst that ends where it began, plus AB
            watch.set_scopes([BC])
            watch.set_scopes([AB])
        await asyncio.sleep(0.3)
        assert watch.lists == 1 and set(watch._tasks) == {AB}
        assert not watch.ready.is_set()  # AB has not listed
        watch.set_scopes([])
        await asyncio.wait_for(watch.ready.wait(), 1)
        assert watch._tasks == {}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
