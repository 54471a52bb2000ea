"""Forgets APIServices that were deleted while kopf's watch was down.

kopf lists again when a watch expires (410 Gone, e.g. after kube-apiserver restarts), but it never
drops what the new list lacks: an APIService deleted during the gap would
stay in kopf's indexes for good, and its verdict with it. kube-aggregator's informers do not have
this hole (their re-list replaces the store). So every --resync-interval we compare each resource's
count on the server (a list with limit=1 carries the total) with the objects our watches hold; only
when we hold more do we list in full, and only an object that a GET confirms gone is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.kube.client import Credentials, get_json

log = logging.getLogger(__name__)

Key = tuple[str | None, str, str]  # namespace (None: cluster-scoped), name, uid: kopf's own index key


@dataclass(frozen=True)
class Kind:
    name: str  # for logs and metrics
    list_path: str  # cluster-wide
    object_path: str  # format with namespace and name

    def path_of(self, namespace: str | None, name: str) -> str:
        return self.object_path.format(namespace=namespace, name=name)


APISERVICES = Kind("apiservices", "/apis/apiregistration.k8s.io/v1/apiservices",
                   "/apis/apiregistration.k8s.io/v1/apiservices/{name}")
# Services and EndpointSlices are our own watches now (kube/selectwatch.py), whose relist replaces
# what they hold, as an informer's does: only kopf's APIServices need this
KINDS = (APISERVICES,)


class Watched:
    """Which objects kopf's watches have seen and not seen deleted, per kind."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[Key, str | None]] = {kind.name: {} for kind in KINDS}

    def saw(self, kind: Kind, namespace: str | None, name: str, uid: str | None, note: str | None = None) -> None:
        if uid:
            self.objects[kind.name][(namespace, name, uid)] = note

    def deleted(self, kind: Kind, namespace: str | None, name: str, uid: str | None) -> None:
        if uid:
            self.objects[kind.name].pop((namespace, name, uid), None)

    def count(self, kind: Kind) -> int:
        return len(self.objects[kind.name])


def unlisted(held: Iterable[Key], listed: Iterable[Key]) -> list[Key]:
    """What we hold that the server's list lacks: ghosts, or objects created since the list (a GET tells)."""
    present = set(listed)
    return [key for key in held if key not in present]


def _keys_of(items: Iterable[dict[str, Any]]) -> list[Key]:
    out = []
    for item in items:
        meta = item.get("metadata") or {}
        out.append((meta.get("namespace"), meta.get("name") or "", meta.get("uid") or ""))
    return out


async def _get_json(credentials: Credentials, path: str, query: list[tuple[str, str]] | None = None) -> Any:
    # metadata only: a resync costs the same for a 10-port Service as for an empty one
    return await get_json(credentials, path, query,
                          accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
                                 "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json")


async def server_count(credentials: Credentials, kind: Kind) -> int | None:
    """The number of objects of `kind`, from one item's worth of list; None when the server did not say."""
    page = await _get_json(credentials, kind.list_path, [("limit", "1")])
    meta = page.get("metadata") or {}
    items = page.get("items") or []
    if not meta.get("continue"):
        return len(items)
    remaining = meta.get("remainingItemCount")
    return None if remaining is None else len(items) + int(remaining)


async def list_keys(credentials: Credentials, kind: Kind, page_size: int = 500) -> list[Key]:
    keys: list[Key] = []
    token = ""
    while True:
        query = [("limit", str(page_size))] + ([("continue", token)] if token else [])
        page = await _get_json(credentials, kind.list_path, query)
        keys.extend(_keys_of(page.get("items") or []))
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return keys


async def is_gone(credentials: Credentials, kind: Kind, key: Key) -> bool:
    namespace, name, uid = key
    try:
        found = await _get_json(credentials, kind.path_of(namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return bool((found.get("metadata") or {}).get("uid") != uid)  # deleted and made again: a new object


async def find_ghosts(credentials: Credentials, kind: Kind, watched: Watched) -> list[Key]:
    """Objects our watches hold that no longer exist. Three small requests when there are none."""
    held = watched.count(kind)
    if held == 0:
        return []
    count = await server_count(credentials, kind)
    if count is not None and count >= held:
        return []
    candidates = unlisted(list(watched.objects[kind.name]), await list_keys(credentials, kind))
    return [key for key in candidates if await is_gone(credentials, kind, key)]
