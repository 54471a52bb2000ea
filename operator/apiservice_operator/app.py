"""kopf wiring: indexes and event handlers only (no finalizer, no annotation, no kopf status),
and our probe loop as a task of our own. DESIGN 8 says why each choice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import kopf

from apiservice_operator.controller import Controller
from apiservice_operator.kubeapi import Credentials, write_conditions
from apiservice_operator.model import Condition, Obj
from apiservice_operator.probe import Prober
from apiservice_operator.settings import Settings

log = logging.getLogger("apiservice_operator")

# Full group, version and plural: without a group kopf scans every API group at start-up, and a
# broken aggregated API (what we watch for) would then stall our own start.
APISERVICES = ("apiregistration.k8s.io", "v1", "apiservices")
SERVICES = ("", "v1", "services")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class IndexInputs:
    """Reads kopf's live indexes (filled by the watches) in the shape the controller wants."""

    def __init__(self) -> None:
        self.indices: dict[str, Any] = {}

    def _one(self, index: str, key: object) -> Obj | None:
        store = self.indices[index].get(key) if index in self.indices else None
        return next(iter(store), None) if store else None

    def apiservice(self, name: str) -> Obj | None:
        return self._one("apiservice_by_name", name)

    def service(self, namespace: str, name: str) -> Obj | None:
        return self._one("service_by_name", (namespace, name))

    def slices(self, namespace: str, name: str) -> list[Obj]:
        store = self.indices["slices_by_service"].get((namespace, name)) if self.indices else None
        return list(store or [])

    def apiservice_names(self) -> Iterable[str]:
        return list(self.indices.get("apiservice_by_name", {}).keys())

    def apiservices_of(self, namespace: str, name: str) -> list[str]:
        store = self.indices["apiservices_by_service"].get((namespace, name)) if self.indices else None
        return list(store or [])


def _project_apiservice(body: kopf.Body, settings: Settings) -> Obj:
    """Keep only what the decision needs: memory stays flat at thousands of APIServices."""
    conditions = [dict(c) for c in (body.get("status") or {}).get("conditions") or []
                  if c.get("type") in settings.types.all]
    meta = body.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "generation": meta.get("generation"),
                     "resourceVersion": meta.get("resourceVersion")},
        "spec": dict(body.get("spec") or {}),
        "status": {"conditions": conditions},
    }


def build_registry(settings: Settings, controller_box: dict[str, Controller], credentials: Credentials,
                   inputs: IndexInputs) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    selector = settings.label_selector
    seen_generation: dict[str, object] = {}

    def selected(body: kopf.Body, **_: Any) -> bool:
        return selector.matches((body.get("metadata") or {}).get("labels"))

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await credentials.connection_info()

    @kopf.index(*APISERVICES, id="apiservice_by_name", registry=registry, when=selected)
    def apiservice_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, Obj]:
        return {name: _project_apiservice(body, settings)}

    @kopf.index(*APISERVICES, id="apiservices_by_service", registry=registry, when=selected)
    def apiservices_by_service(name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str] | None:
        ref = spec.get("service")
        return {(ref.get("namespace") or "", ref.get("name") or ""): name} if ref else None

    @kopf.index(*SERVICES, id="service_by_name", registry=registry)
    def service_by_name(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], Obj]:
        return {(namespace or "", name): {"spec": {
            "type": spec.get("type"), "externalName": spec.get("externalName"),
            "ports": [dict(p) for p in spec.get("ports") or []]}}}

    @kopf.index(*ENDPOINTSLICES, id="slices_by_service", registry=registry)
    def slices_by_service(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels,
                          **_: Any) -> dict[tuple[str, str], Obj] | None:
        service = labels.get(SERVICE_NAME_LABEL)
        if not service:
            return None
        return {(namespace or "", service): {
            "metadata": {"name": name},
            "ports": [dict(p) for p in body.get("ports") or []],
            "endpoints": [{"addresses": list(e.get("addresses") or []),
                           "conditions": dict(e.get("conditions") or {})}
                          for e in body.get("endpoints") or []],
        }}

    @kopf.on.event(*APISERVICES, registry=registry)
    def apiservice_event(type: str | None,  # noqa: A002 - kopf's keyword
                          name: str, body: kopf.Body, **_: Any) -> None:
        controller = controller_box.get("controller")
        if controller is None:
            return
        if type == "DELETED" or not selector.matches((body.get("metadata") or {}).get("labels")):
            seen_generation.pop(name, None)
            controller.forget(name)
            return
        # Our own status writes come back as events too: re-check only when the spec moved,
        # or the operator would loop on itself.
        key = ((body.get("metadata") or {}).get("generation"), repr(body.get("spec")))
        if seen_generation.get(name) != key:
            seen_generation[name] = key
            controller.changed_now([name])

    @kopf.on.event(*SERVICES, registry=registry)
    def service_event(namespace: str | None, name: str, **_: Any) -> None:
        controller = controller_box.get("controller")
        if controller is not None:
            controller.changed_now(inputs.apiservices_of(namespace or "", name))

    @kopf.on.event(*ENDPOINTSLICES, registry=registry)
    def slice_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        controller = controller_box.get("controller")
        service = labels.get(SERVICE_NAME_LABEL)
        if controller is not None and service:
            controller.changed_now(inputs.apiservices_of(namespace or "", service))

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
    return s


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    credentials = Credentials(settings.kubeconfig)
    await credentials.load()
    prober = Prober(settings.probe_timeout, credentials.current_token)
    inputs = IndexInputs()

    async def write(name: str, conditions: list[Condition] | Any) -> bool:
        return await write_conditions(credentials, name, conditions)

    controller = Controller(settings=settings, inputs=inputs, probe=prober.probe_discovery, write=write)
    controller_box = {"controller": controller}
    registry = build_registry(settings, controller_box, credentials, inputs)

    @kopf.on.startup(registry=registry)
    async def capture_indices(**kwargs: Any) -> None:
        # kopf pre-creates the (empty) indexes before start-up handlers: keep live references
        for key in ("apiservice_by_name", "apiservices_by_service", "service_by_name", "slices_by_service"):
            inputs.indices[key] = kwargs[key]

    ready = asyncio.Event()
    stop_flag = stop or asyncio.Event()
    loop_task = asyncio.create_task(_probe_loop(controller, ready, credentials), name="probe loop")
    try:
        await kopf.operator(
            registry=registry, settings=kopf_settings(settings), standalone=True, clusterwide=True,
            ready_flag=ready, stop_flag=stop_flag,
        )
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await prober.aclose()
        await credentials.close()


async def _probe_loop(controller: Controller, ready: asyncio.Event, credentials: Credentials) -> None:
    await ready.wait()
    runner = asyncio.create_task(controller.run(), name="controller")
    try:
        while not runner.done():
            # a safety net behind the event-driven schedule: anything indexed but not queued gets queued
            controller.schedule_all()
            await credentials.refresh_token()
            await asyncio.wait([runner], timeout=controller.settings.probe_interval)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
