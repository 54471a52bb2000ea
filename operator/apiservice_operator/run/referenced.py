"""What the handled APIServices need of the cluster, and nothing else (issue 26): the Services they
reference, those Services' EndpointSlices, default/kubernetes's EndpointSlices (the kube-apiserver
instances the path probe asks) and the Terminating Namespaces (the blast radius). kopf watches the
APIServices only; these are our own selective watches (kube/selectwatch.py), whose scopes follow the
referenced set as APIServices come, go and change:
- Services: one scope per referenced Service, `metadata.name=<name>` in its namespace (Services
  carry no label to select a set by, and a whole namespace is other people's Services);
- EndpointSlices: one scope per namespace, `kubernetes.io/service-name in (<names>)`;
- Namespaces: `status.phase=Terminating`, only while some APIService references a Service.
No unrelated object reaches the operator: kube-apiserver filters before it sends. A check of an
APIService waits until the scopes that cover it have listed, or it would judge a Service it has not
read yet as missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from apiservice_operator.core.blast import apiservice_name, blocking_group_versions
from apiservice_operator.core.model import Obj
from apiservice_operator.core.path import KUBERNETES_SERVICE
from apiservice_operator.kube.client import Credentials
from apiservice_operator.kube.selectwatch import Resource, Scope, SelectiveWatch

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICES = Resource("", "v1", "services", namespaced=True)
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", namespaced=True)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
TERMINATING = (None, "", "status.phase=Terminating")

ServiceKey = tuple[str, str]  # namespace, name


def project_service(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    return {"spec": {"type": spec.get("type"), "externalName": spec.get("externalName"),
                     "ports": [dict(p) for p in spec.get("ports") or []]}}


def project_slice(obj: Obj) -> Obj | None:
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service:
        return None
    return {"metadata": {"name": meta.get("name")}, "service": service,
            "ports": [dict(p) for p in obj.get("ports") or []],
            "endpoints": [{"addresses": list(e.get("addresses") or []), "conditions": dict(e.get("conditions") or {})}
                          for e in obj.get("endpoints") or []]}


def project_namespace(obj: Obj) -> Obj | None:
    """Only a namespace whose deletion waits on discovery is kept: the group/versions it names."""
    waiting = blocking_group_versions(obj)
    return {"waiting": list(waiting)} if waiting else None


def scopes_for(referenced: Iterable[ServiceKey], path_probe: bool) -> tuple[set[Scope], set[Scope], set[Scope]]:
    """(Services, EndpointSlices, Namespaces) scopes for the referenced Services. Pure."""
    wanted = set(referenced)
    if not wanted:
        return set(), set(), set()
    services: set[Scope] = {(namespace, "", f"metadata.name={name}") for namespace, name in wanted}
    names: dict[str, set[str]] = {}
    for namespace, name in wanted | ({KUBERNETES_SERVICE} if path_probe else set()):
        names.setdefault(namespace, set()).add(name)
    slices: set[Scope] = {(namespace, f"{SERVICE_NAME_LABEL} in ({','.join(sorted(held))})", "")
                          for namespace, held in names.items()}
    return services, slices, {TERMINATING}


def _names_in(selector: str) -> set[str]:
    """The names in our own `kubernetes.io/service-name in (a,b)`."""
    inside = selector.partition(" in (")[2].rstrip(")")
    return set(inside.split(",")) if inside else set()


class Referenced:
    def __init__(self, credentials: Credentials, apiservices_of: Callable[[str, str], list[str]],
                 path_probe: bool) -> None:
        self.apiservices_of = apiservices_of
        self.path_probe = path_probe
        self.on_check: Callable[[Iterable[str]], None] = lambda names: None  # the controller's, once it exists
        self.services = SelectiveWatch(SERVICES, credentials, self._changed, name="services",
                                       project=project_service)
        self.slices = SelectiveWatch(ENDPOINTSLICES, credentials, self._changed, name="endpointslices",
                                     project=project_slice)
        self.namespaces = SelectiveWatch(NAMESPACES, credentials, self._changed, name="namespaces",
                                         project=project_namespace)
        self._by_service: dict[ServiceKey, dict[str, Obj]] = {}
        self._slice_service: dict[tuple[str, str], str] = {}
        self._waiting: dict[str, tuple[str, ...]] = {}  # namespace -> the group/versions it waits on
        self._blocked: dict[str, set[str]] = {}  # group/version -> namespaces
        self._pending: set[str] = set()
        self._pending_added = asyncio.Event()

    @property
    def watches(self) -> tuple[SelectiveWatch, ...]:
        return self.services, self.slices, self.namespaces

    def follow(self, referenced: Iterable[ServiceKey]) -> None:
        """The Services the handled APIServices reference now (each watch debounces a burst)."""
        for watch, scopes in zip(self.watches, scopes_for(referenced, self.path_probe), strict=True):
            watch.set_scopes(scopes)

    def synced(self) -> bool:
        return all(w.ready.is_set() for w in self.watches)

    async def first_sync(self, referenced: Iterable[ServiceKey]) -> None:
        """Once kopf's APIService index is full: the Services it references are listed before any
        check, which would otherwise judge a Service not read yet as missing."""
        self.follow(referenced)
        while not self.synced():
            for watch in self.watches:
                await watch.ready.wait()

    def covers(self, namespace: str, name: str) -> bool:
        """The Service, its EndpointSlices and the Terminating namespaces have been listed: a check
        of an APIService that references it sees them (a scope being replaced still counts)."""
        if (namespace, "", f"metadata.name={name}") not in self.services.listed():
            return False
        if TERMINATING not in self.namespaces.listed():
            return False
        return any(scope[0] == namespace and name in _names_in(scope[1]) for scope in self.slices.listed())

    def check_when_synced(self, names: Iterable[str]) -> None:
        if self.synced() and not self._pending:
            self.on_check(names)
            return
        self._pending.update(names)
        self._pending_added.set()

    # what the pipeline reads (IndexInputs)
    def service(self, namespace: str, name: str) -> Obj | None:
        return self.services.get(namespace, name)

    def slices_of(self, namespace: str, name: str) -> list[Obj]:
        return list(self._by_service.get((namespace, name), {}).values())

    def blocked_namespaces(self, group_version: str) -> list[str]:
        return sorted(self._blocked.get(group_version, ()))

    def _changed(self, kind: str, namespace: str | None, name: str, obj: Obj | None) -> None:
        if kind == "services":
            self.on_check(self.apiservices_of(namespace or "", name))
        elif kind == "endpointslices":
            key = (namespace or "", name)
            before = self._slice_service.pop(key, None)
            if before is not None:
                self._by_service.get((key[0], before), {}).pop(name, None)
            if obj is not None:
                self._slice_service[key] = obj["service"]
                self._by_service.setdefault((key[0], obj["service"]), {})[name] = obj
            for service in {s for s in (before, obj["service"] if obj else None) if s}:
                if not self._by_service.get((key[0], service)):
                    self._by_service.pop((key[0], service), None)
                self.on_check(self.apiservices_of(key[0], service))
        else:
            now = tuple(obj["waiting"]) if obj is not None else ()
            before_gvs = self._waiting.pop(name, ())
            for gv in before_gvs:
                self._blocked.get(gv, set()).discard(name)
                if not self._blocked.get(gv, True):
                    del self._blocked[gv]
            if now:
                self._waiting[name] = now
                for gv in now:
                    self._blocked.setdefault(gv, set()).add(name)
            # an unavailable API's message names the namespaces it blocks: re-decide those it gained or lost
            self.on_check(apiservice_name(gv) for gv in set(now) | set(before_gvs))

    async def run(self) -> None:
        await asyncio.gather(*(w.run() for w in self.watches), self._release())

    async def _release(self) -> None:
        """Checks held back until the scopes covering them have listed go once they have."""
        while True:
            await self._pending_added.wait()
            for watch in self.watches:
                await watch.ready.wait()
            if self.synced():  # (one may have cleared again while another was awaited)
                names, self._pending = self._pending, set()
                self._pending_added.clear()
                self.on_check(names)
