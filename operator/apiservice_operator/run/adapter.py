"""The kopf adapter: the only module that imports kopf. It watches the APIServices (indexes and event
handlers only: no finalizer, no annotation, no kopf status; DESIGN 8 says why), hands our credentials
to kopf's login, and starts and stops kopf. The Services, EndpointSlices and Namespaces the
APIServices need are our own selective watches (run/referenced.py), whose scopes the APIService
handler moves. Its handlers only enqueue: the controller does the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import kopf

# kopf.operator() takes an `indexers` argument typed with this class, and re-exports neither it nor
# Identity (a NewType of str): an embedded operator that wants to discard an index entry (a resync
# finding a ghost) or name itself has to import them from kopf's private modules.
from kopf._core.engines.indexing import OperatorIndexers
from kopf._core.engines.peering import Identity as KopfIdentity

from apiservice_operator.check.controller import Controller
from apiservice_operator.core.backends import Backend, backend_change, backend_of
from apiservice_operator.core.model import APISERVICES, Obj
from apiservice_operator.core.settings import Settings
from apiservice_operator.kube import resync
from apiservice_operator.kube.client import Credentials
from apiservice_operator.run.referenced import Referenced
from apiservice_operator.serve.health import HealthState

log = logging.getLogger("apiservice_operator")


class IndexInputs:
    """Reads kopf's live APIService indexes and our referenced watches (run/referenced.py) in the
    shape the controller wants."""

    def __init__(self) -> None:
        self.indices: dict[str, Any] = {}
        self.referenced: Referenced | None = None

    def _one(self, index: str, key: object) -> Obj | None:
        store = self.indices[index].get(key) if index in self.indices else None
        return next(iter(store), None) if store else None

    def apiservice(self, name: str) -> Obj | None:
        return self._one("apiservice_by_name", name)

    def service(self, namespace: str, name: str) -> Obj | None:
        return self.referenced.service(namespace, name) if self.referenced else None

    def slices(self, namespace: str, name: str) -> list[Obj]:
        return self.referenced.slices_of(namespace, name) if self.referenced else []

    def apiservice_names(self) -> Iterable[str]:
        return list(self.indices.get("apiservice_by_name", {}).keys())

    def blocked_namespaces(self, group_version: str) -> list[str]:
        return self.referenced.blocked_namespaces(group_version) if self.referenced else []

    def apiservices_of(self, namespace: str, name: str) -> list[str]:
        store = self.indices["apiservices_by_service"].get((namespace, name)) if self.indices else None
        return list(store or [])

    def referenced_services(self) -> list[tuple[str, str]]:
        """The Services the handled APIServices reference (keys of kopf's index)."""
        return [key for key, names in self.indices.get("apiservices_by_service", {}).items() if names]

    def ready_for(self, name: str) -> bool:
        apiservice = self.apiservice(name)
        ref = ((apiservice or {}).get("spec") or {}).get("service")
        if not ref or self.referenced is None:
            return True  # gone, or Local: nothing else to read
        return self.referenced.covers(ref.get("namespace") or "", ref.get("name") or "")


def _project_apiservice(body: kopf.Body, settings: Settings) -> Obj:
    """Keep only what the decision needs: memory stays flat at thousands of APIServices."""
    # ours, and kube-apiserver's own Available: the user's-path decision quotes it as evidence
    conditions = [dict(c) for c in (body.get("status") or {}).get("conditions") or []
                  if c.get("type") in settings.types.all or c.get("type") == "Available"]
    meta = body.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "uid": meta.get("uid"), "generation": meta.get("generation"),
                     "resourceVersion": meta.get("resourceVersion")},
        "spec": dict(body.get("spec") or {}),
        "status": {"conditions": conditions},
    }


def _kube_available(body: kopf.Body) -> tuple[str, str]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Available":
            return str(cond.get("status") or ""), str(cond.get("message") or "")
    return "", ""


def build_registry(settings: Settings, controller_box: dict[str, Controller], credentials: Credentials,
                   inputs: IndexInputs, health: HealthState,
                   watched: resync.Watched | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    selector = settings.label_selector
    seen_generation: dict[str, object] = {}
    seen_kube: dict[str, tuple[str, str]] = {}  # kube-apiserver's own Available: (status, message)
    # each APIService's backend as last seen; unknown (no entry) after a start: no change is told then
    seen_backend: dict[str, Backend] = {}
    watched = watched if watched is not None else resync.Watched()

    def track(kind: resync.Kind, type_: str | None, namespace: str | None, name: str, uid: str | None,
              note: str | None = None) -> None:
        if type_ == "DELETED":
            watched.deleted(kind, namespace, name, uid)
        else:
            watched.saw(kind, namespace, name, uid, note)

    def selected(body: kopf.Body, **_: Any) -> bool:
        return selector.matches((body.get("metadata") or {}).get("labels"))

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        configuration = await credentials.login()
        return kopf.ConnectionInfo(
            server=str(configuration.host),
            ca_path=configuration.ssl_ca_cert or None,
            insecure=not configuration.verify_ssl,
            certificate_path=configuration.cert_file or None,
            private_key_path=configuration.key_file or None,
            scheme="Bearer" if credentials.token else None,
            token=credentials.token,
        )

    # Index handlers are async: kopf runs sync handlers in a thread pool, a thread hop per watch
    # event (11% of the CPU at N=1000 went to the pool's workers)
    @kopf.index(*APISERVICES, id="apiservice_by_name", registry=registry, when=selected)
    async def apiservice_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, Obj]:
        return {name: _project_apiservice(body, settings)}

    @kopf.index(*APISERVICES, id="apiservices_by_service", registry=registry, when=selected)
    async def apiservices_by_service(name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str] | None:
        ref = spec.get("service")
        return {(ref.get("namespace") or "", ref.get("name") or ""): name} if ref else None

    # Handlers that touch the queue are async: kopf runs sync handlers in a thread pool,
    # away from the event loop that owns the queue.
    @kopf.on.event(*APISERVICES, registry=registry)
    async def apiservice_event(type: str | None,  # noqa: A002 - kopf's keyword
                          name: str, uid: str | None, body: kopf.Body, **_: Any) -> None:
        track(resync.APISERVICES, type, None, name, uid)
        # kopf holds non-index handlers back until every index has been filled from its initial
        # listing, so the first event means the caches are synced
        health.synced = True
        controller = controller_box.get("controller")
        if controller is None:
            return
        controller.arrived(name, str((body.get("metadata") or {}).get("resourceVersion") or ""))
        referenced = inputs.referenced
        if referenced is not None:
            referenced.follow(inputs.referenced_services())
        if type == "DELETED" or not selector.matches((body.get("metadata") or {}).get("labels")):
            seen_generation.pop(name, None)
            seen_kube.pop(name, None)
            seen_backend.pop(name, None)
            controller.forget(name)
            return
        # Our own status writes come back as events too: re-check only when the spec moved,
        # or the operator would loop on itself.
        key = (uid, (body.get("metadata") or {}).get("generation"), repr(body.get("spec")))
        kube = _kube_available(body)
        kube_before = seen_kube.get(name)
        seen_kube[name] = kube
        if seen_generation.get(name) != key:
            seen_generation[name] = key
            old = seen_backend.get(name)
            seen_backend[name] = backend_of(body)
            if old is not None and (change := backend_change(name, old, body)) is not None:
                await controller.backend_changed(name, uid, change)
            if referenced is not None:
                referenced.check_when_synced([name])
            else:
                controller.changed_now([name])
        elif kube_before is not None and kube_before != kube:
            # kube-apiserver's own verdict moved (it re-checks a failing server from 5 ms on): news
            # about the server that our backoff would otherwise wait for
            controller.kube_changed(name)

    return registry


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.peering.standalone = True
    s.scanning.disabled = True
    s.posting.enabled = False  # kopf files events of cluster-scoped objects where nobody sees them
    s.networking.request_timeout = 30
    s.networking.connect_timeout = 10
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.watching.connect_timeout = 10
    s.batching.error_delays = [1, 2, 5, 10]
    # kopf holds each object's events this long to squash a burst (0.1 s by default); our handlers
    # only queue a name, and our own debounce coalesces: a removed endpoint should show at once
    s.batching.batch_window = 0.01
    return s


def forget_ghost(key: resync.Key, watched: resync.Watched, indexers: OperatorIndexers,
                 controller: Controller) -> None:
    """What a DELETED event of an APIService would have done, had the watch been there to see it."""
    namespace, name, uid = key
    log.warning("forgetting apiservice %s: deleted while our watch was down (kopf's re-list keeps it)", name)
    # kopf's index key is (namespace, name, uid), read with .get(): None stands for cluster-scoped
    body: Any = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
    indexers.discard(body)
    watched.deleted(resync.APISERVICES, namespace, name, uid)
    controller.forget(name)


INDEXES = ("apiservice_by_name", "apiservices_by_service")


class Watches:
    """kopf's watches and indexes, as one thing the supervisor starts and stops."""

    def __init__(self, settings: Settings, controller_box: dict[str, Controller], credentials: Credentials,
                 inputs: IndexInputs, health: HealthState, watched: resync.Watched,
                 on_start: Callable[[], None]) -> None:
        self.settings = settings
        self.inputs = inputs
        self.watched = watched
        self.indexers = OperatorIndexers()
        self.registry = build_registry(settings, controller_box, credentials, inputs, health, watched)

        @kopf.on.startup(registry=self.registry)
        async def capture_indices(**kwargs: Any) -> None:
            # kopf pre-creates the (empty) indexes before start-up handlers: keep live references
            for key in INDEXES:
                inputs.indices[key] = kwargs[key]
            on_start()

    async def run(self, ready: asyncio.Event, stop: asyncio.Event, holder: str) -> None:
        await kopf.operator(
            registry=self.registry, indexers=self.indexers, settings=kopf_settings(self.settings), standalone=True,
            clusterwide=True, ready_flag=ready, stop_flag=stop,
            # kopf would otherwise ask the passwd database (getpass.getuser), which has no entry
            # for the image's numeric non-root user
            identity=KopfIdentity(holder),
        )

    def forget_ghost(self, key: resync.Key, controller: Controller) -> None:
        forget_ghost(key, self.watched, self.indexers, controller)
