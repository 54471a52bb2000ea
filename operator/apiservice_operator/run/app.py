"""kopf wiring: indexes and event handlers only (no finalizer, no annotation, no kopf status),
and our probe loop as a task of our own. DESIGN 8 says why each choice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import kopf
from kopf._core.engines.indexing import OperatorIndexers  # kopf's own, for embedded operators
from kopf._core.engines.peering import Identity  # a NewType of str; kopf does not re-export it

from apiservice_operator.check.controller import Controller, utc_now
from apiservice_operator.check.metrics import Metrics
from apiservice_operator.check.pipeline import Pipeline
from apiservice_operator.core.blast import apiservice_name, blocking_group_versions
from apiservice_operator.core.model import APISERVICES, Condition, Obj
from apiservice_operator.core.settings import Settings
from apiservice_operator.kube import resync
from apiservice_operator.kube.client import Credentials, write_conditions
from apiservice_operator.kube.events import EventRecorder
from apiservice_operator.kube.identity import ProbeIdentity
from apiservice_operator.kube.leader import LeaderElector
from apiservice_operator.kube.permissions import Permission, missing_permissions, needed
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker, effective_mode
from apiservice_operator.probing.probe import Prober, inspect_tls
from apiservice_operator.run import heap
from apiservice_operator.serve.explain import explain
from apiservice_operator.serve.health import HealthState
from apiservice_operator.serve.health import serve as serve_health

log = logging.getLogger("apiservice_operator")
KOPF_STOP_GRACE = 1.0  # seconds kopf gets to end its watches before they are cancelled
IDENTITY_WAIT = 10.0  # seconds the first probes wait for the probe identity's first token

# Full group, version and plural, as APISERVICES (core.model) is: DESIGN 8.
SERVICES = ("", "v1", "services")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
NAMESPACES = ("", "v1", "namespaces")
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

    def blocked_namespaces(self, group_version: str) -> list[str]:
        store = self.indices["blocked_by_group_version"].get(group_version) if self.indices else None
        return sorted(store or [])

    def apiservices_of(self, namespace: str, name: str) -> list[str]:
        store = self.indices["apiservices_by_service"].get((namespace, name)) if self.indices else None
        return list(store or [])


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


def build_registry(settings: Settings, controller_box: dict[str, Controller], credentials: Credentials,
                   inputs: IndexInputs, health: HealthState,
                   watched: resync.Watched | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    selector = settings.label_selector
    seen_generation: dict[str, object] = {}
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

    @kopf.index(*SERVICES, id="service_by_name", registry=registry)
    async def service_by_name(namespace: str | None, name: str, spec: kopf.Spec,
                              **_: Any) -> dict[tuple[str, str], Obj]:
        return {(namespace or "", name): {"spec": {
            "type": spec.get("type"), "externalName": spec.get("externalName"),
            "ports": [dict(p) for p in spec.get("ports") or []]}}}

    @kopf.index(*ENDPOINTSLICES, id="slices_by_service", registry=registry)
    async def slices_by_service(namespace: str | None, name: str, body: kopf.Body, labels: kopf.Labels,
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

    def waiting(body: kopf.Body, **_: Any) -> bool:
        return bool(blocking_group_versions(body))

    # Only Terminating namespaces whose deletion waits on discovery are kept (blast.py). A filter,
    # not a None result: kopf keeps an object's old index entries when its handler returns None,
    # and drops them only when the object stops matching the filter.
    @kopf.index(*NAMESPACES, id="blocked_by_group_version", registry=registry, when=waiting)
    async def blocked_by_group_version(name: str, body: kopf.Body, **_: Any) -> dict[str, str]:
        return {gv: name for gv in blocking_group_versions(body)}

    waiting_on: dict[str, tuple[str, ...]] = {}  # namespace -> the group/versions it waited on

    @kopf.on.event(*NAMESPACES, registry=registry)
    async def namespace_event(type: str | None, name: str, body: kopf.Body,  # noqa: A002
                              **_: Any) -> None:
        now = () if type == "DELETED" else blocking_group_versions(body)
        before = waiting_on.pop(name, ())
        if now:
            waiting_on[name] = now
        controller = controller_box.get("controller")
        if controller is not None and (now or before):
            # an unavailable API's message names the namespaces it blocks: re-decide those it gained or lost
            controller.changed_now(apiservice_name(gv) for gv in set(now) | set(before))

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
        if type == "DELETED" or not selector.matches((body.get("metadata") or {}).get("labels")):
            seen_generation.pop(name, None)
            controller.forget(name)
            return
        # Our own status writes come back as events too: re-check only when the spec moved,
        # or the operator would loop on itself.
        key = (uid, (body.get("metadata") or {}).get("generation"), repr(body.get("spec")))
        if seen_generation.get(name) != key:
            seen_generation[name] = key
            controller.changed_now([name])

    @kopf.on.event(*SERVICES, registry=registry)
    async def service_event(type: str | None, namespace: str | None, name: str,  # noqa: A002
                            uid: str | None, **_: Any) -> None:
        track(resync.SERVICES, type, namespace, name, uid)
        controller = controller_box.get("controller")
        if controller is not None:
            controller.changed_now(inputs.apiservices_of(namespace or "", name))

    @kopf.on.event(*ENDPOINTSLICES, registry=registry)
    async def slice_event(type: str | None, namespace: str | None, name: str,  # noqa: A002
                          uid: str | None, labels: kopf.Labels, **_: Any) -> None:
        controller = controller_box.get("controller")
        service = labels.get(SERVICE_NAME_LABEL)
        track(resync.ENDPOINTSLICES, type, namespace, name, uid, service)
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
    # kopf holds each object's events this long to squash a burst (0.1 s by default); our handlers
    # only queue a name, and our own debounce coalesces: a removed endpoint should show at once
    s.batching.batch_window = 0.01
    return s


def probe_identity(settings: Settings, credentials: Credentials) -> ProbeIdentity | None:
    value = settings.probe_service_account.strip()
    if value.lower() == "none":
        return None
    namespace, _, name = value.rpartition("/")
    return ProbeIdentity(credentials, namespace or default_operator_namespace(), name)


def path_checker(settings: Settings, credentials: Credentials, inputs: IndexInputs, prober: Prober,
                 identity: ProbeIdentity | None) -> PathChecker | None:
    configuration = credentials.configuration
    assert configuration is not None
    ca = None
    if configuration.ssl_ca_cert:
        with open(configuration.ssl_ca_cert, "rb") as f:
            ca = f.read()
    access = ClusterAccess(server=str(configuration.host), ca=ca, in_cluster=settings.kubeconfig is None)
    mode = effective_mode(settings.path_probe, access)
    if mode == "off":
        return None
    log.info("path probe: through %s", "each kube-apiserver instance" if mode == "instances" else access.server)
    return PathChecker(mode=mode, access=access, slices=inputs, probe=prober.probe_every, identity=identity,
                       clock=time.monotonic, pick=settings.picked_instances)


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_lease_namespace() -> str:
    return _pod_namespace() or "default"


def default_operator_namespace() -> str:
    """Where the probe identity lives by default: the pod's namespace, or the manifests' one when
    the operator runs outside the cluster."""
    return _pod_namespace() or "apiservice-operator"


def _pod_namespace() -> str | None:
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    identity = settings.identity or default_identity()
    lease_namespace = settings.lease_namespace or default_lease_namespace()
    credentials = Credentials(settings.kubeconfig)
    await credentials.load()
    prober_id = probe_identity(settings, credentials)
    # the operator's own token never leaves for an aggregated server: only the probe identity's
    metrics = Metrics()
    prober = Prober(settings.probe_timeout, prober_id.token if prober_id else lambda: None,
                    on_connection=metrics.probe_connections.inc)
    inputs = IndexInputs()
    health = HealthState(leader_election=settings.leader_election)
    recorder = EventRecorder(credentials, settings.events_namespace, identity)

    async def write(name: str, conditions: Sequence[Condition]) -> bool:
        return await write_conditions(credentials, name, conditions)

    controller = Controller(settings=settings, inputs=inputs, probe=prober.probe_discovery, write=write,
                            metrics=metrics, record_event=recorder.record, silent=prober.silence.silent,
                            path=path_checker(settings, credentials, inputs, prober, prober_id))
    health.problems = controller.problems
    controller_box = {"controller": controller}
    watched = resync.Watched()
    indexers = OperatorIndexers()
    registry = build_registry(settings, controller_box, credentials, inputs, health, watched)

    @kopf.on.startup(registry=registry)
    async def capture_indices(**kwargs: Any) -> None:
        # kopf pre-creates the (empty) indexes before start-up handlers: keep live references
        for key in ("apiservice_by_name", "apiservices_by_service", "service_by_name", "slices_by_service",
                    "blocked_by_group_version"):
            inputs.indices[key] = kwargs[key]
        take_signals_back()

    elector = None
    if settings.leader_election:
        elector = LeaderElector(
            credentials, lease_namespace, settings.lease_name, identity,
            lease_duration=settings.lease_duration, renew_deadline=settings.lease_duration * 2 / 3,
            retry_period=max(0.5, settings.lease_duration / 7.5))
    perms = needed(settings.events_namespace, lease_namespace if elector else None, settings.lease_name,
                   (prober_id.namespace, prober_id.name) if prober_id else None)

    ready = asyncio.Event()
    stop_requested = stop or asyncio.Event()
    # kopf waits up to 5 s for any task spawned after its start (our checks among them) before it
    # exits: so on SIGTERM our own loop stops first, the Lease is released, then kopf is told.
    kopf_stop = asyncio.Event()
    # the controller's pipeline, traced: every request sent, each handshake looked at, nothing remembered
    traced = Pipeline(settings, inputs, prober.probe_discovery, controller.path, utc_now, prober.silence.silent,
                      probe_every=prober.probe_every, inspect=inspect_tls)

    async def explain_one(name: str) -> dict[str, Any] | None:
        return await explain(name, traced)

    runner = (await serve_health(settings.metrics_port, health, metrics, explain=explain_one)
              if settings.metrics_port else None)
    background = [
        asyncio.create_task(_heartbeat(health), name="heartbeat"),
        asyncio.create_task(heap.give_back_every(), name="heap trim"),
        asyncio.create_task(_check_permissions(credentials, perms, controller.problems), name="permissions"),
        asyncio.create_task(_probe_loop(controller, ready, elector, health, metrics, prober_id), name="probe loop"),
    ]
    if prober_id is not None:
        background.append(asyncio.create_task(prober_id.run(), name="probe identity"))
    if settings.resync_interval > 0:
        background.append(asyncio.create_task(
            _resync_loop(settings.resync_interval, ready, credentials, watched, indexers, inputs, controller),
            name="resync"))
    if elector is not None:
        background.append(asyncio.create_task(elector.run(), name="leader election"))

    async def stop_ours() -> None:
        for task in reversed(background):  # the probe loop stops before the Lease is released
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    kopf_task = asyncio.create_task(kopf.operator(
        registry=registry, indexers=indexers, settings=kopf_settings(settings), standalone=True,
        clusterwide=True,
        ready_flag=ready, stop_flag=kopf_stop,
        # kopf would otherwise ask the passwd database (getpass.getuser), which has no entry
        # for the image's numeric non-root user
        identity=Identity(identity),
    ), name="kopf")
    cut_short = False

    async def on_stop_request() -> None:
        nonlocal cut_short
        await stop_requested.wait()
        log.info("stopping: probe loop first, then the watches")
        await stop_ours()
        kopf_stop.set()
        # A graceful kopf then waits up to 5 s for tasks hanging on a frozen kube-apiserver (its own
        # discovery requests among them). It keeps no state of ours (no finalizers, annotations or
        # kopf status), so there is nothing for it to finish: cut the wait short.
        done, _ = await asyncio.wait([kopf_task], timeout=KOPF_STOP_GRACE)
        if not done:
            cut_short = True
            kopf_task.cancel()

    def take_signals_back() -> None:
        if threading.current_thread() is threading.main_thread():
            # kopf put its own SIGTERM/SIGINT handlers in place of ours when it started: take them
            # back, or kopf would stop first and wait 5 s for our in-flight checks
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop_requested.set)

    async def after_ready() -> None:
        # kopf installs its handlers after one sleep(0) into its start, and our start-up handler
        # (capture_indices) may already have run by then: take them back once more when ready
        await ready.wait()
        take_signals_back()

    stopper = asyncio.create_task(on_stop_request(), name="stopper")
    reclaimer = asyncio.create_task(after_ready(), name="signals")
    try:
        try:
            await kopf_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not cut_short or (current is not None and current.cancelling()):
                raise
            log.info("stopped kopf without waiting for requests that hang on kube-apiserver")
    finally:
        reclaimer.cancel()
        stopper.cancel()
        await stop_ours()
        if runner is not None:
            await runner.cleanup()
        await prober.aclose()
        await credentials.close()


async def _resync_loop(interval: float, ready: asyncio.Event, credentials: Credentials, watched: resync.Watched,
                       indexers: OperatorIndexers, inputs: IndexInputs, controller: Controller) -> None:
    await ready.wait()
    while True:
        await asyncio.sleep(interval)
        for kind in resync.KINDS:
            try:
                ghosts = await resync.find_ghosts(credentials, kind, watched)
            except Exception as exc:  # the API may be down: the watches will say so louder
                log.warning("resync of %s failed: %r", kind.name, exc)
                continue
            for key in ghosts:
                forget_ghost(kind, key, watched, indexers, inputs, controller)


def forget_ghost(kind: resync.Kind, key: resync.Key, watched: resync.Watched, indexers: OperatorIndexers,
                 inputs: IndexInputs, controller: Controller) -> None:
    """What a DELETED event would have done, had the watch been there to see it."""
    namespace, name, uid = key
    service = watched.objects[kind.name].get(key)
    log.warning("forgetting %s %s: deleted while our watch was down (kopf's re-list keeps it)",
                kind.name, f"{namespace}/{name}" if namespace else name)
    # kopf's index key is (namespace, name, uid), read with .get(): None stands for cluster-scoped
    body: Any = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
    indexers.discard(body)
    watched.deleted(kind, namespace, name, uid)
    if kind is resync.APISERVICES:
        controller.forget(name)
    elif kind is resync.SERVICES:
        controller.changed_now(inputs.apiservices_of(namespace or "", name))
    elif service:
        controller.changed_now(inputs.apiservices_of(namespace or "", service))


async def _heartbeat(health: HealthState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        health.heartbeat = loop.time()
        await asyncio.sleep(1)


async def _check_permissions(credentials: Credentials, perms: list[Permission], problems: dict[str, str]) -> None:
    while True:
        try:
            missing = await missing_permissions(credentials, perms)
        except Exception as exc:
            log.warning("permission check failed: %r", exc)
            missing = None
        if missing:
            text = "; ".join(p.describe() for p in missing)
            if problems.get("rbac") != text:
                for p in missing:
                    log.error("missing permission: %s (grant it to the operator's ServiceAccount: "
                              "see manifests/rbac.yaml)", p.describe())
            problems["rbac"] = text
        elif missing is not None and "rbac" in problems:
            del problems["rbac"]
            log.info("all permissions present again")
        await asyncio.sleep(60 if not missing else 10)


async def _probe_loop(controller: Controller, ready: asyncio.Event, elector: LeaderElector | None,
                      health: HealthState, metrics: Metrics, identity: ProbeIdentity | None) -> None:
    await ready.wait()
    if identity is not None:
        # probes sent before the first token would go anonymous and read as refusals
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDENTITY_WAIT):
                await identity.tried.wait()
    while True:
        if elector is not None:
            metrics.leader.set(0)
            health.leading = False
            await elector.leading.wait()
        metrics.leader.set(1)
        health.leading = True
        controller.schedule_all()
        runner = asyncio.create_task(controller.run(), name="controller")
        lost = asyncio.create_task(_lost(elector), name="leadership watch")
        try:
            while not runner.done() and not lost.done():
                # a safety net behind the event-driven schedule: anything indexed but not queued gets queued
                controller.schedule_all()
                if identity is not None and identity.problem:
                    controller.problems["probe-identity"] = identity.problem
                else:
                    controller.problems.pop("probe-identity", None)
                await asyncio.wait([runner, lost], timeout=controller.settings.probe_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            runner.cancel()
            lost.cancel()
            await asyncio.gather(runner, lost, return_exceptions=True)
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        log.info("stopped probing: leadership lost")


async def _lost(elector: LeaderElector | None) -> None:
    if elector is None:
        await asyncio.Event().wait()
        return
    await elector.not_leading.wait()
