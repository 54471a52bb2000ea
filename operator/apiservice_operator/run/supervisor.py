"""The supervisor: builds the operator's parts, starts every task (kopf's watches through the adapter,
the probe loop, leader election, the probe identity, resync, health), and stops them in order on
SIGTERM: our probe loop first, then the Lease, then kopf."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from apiservice_operator.check.controller import Controller
from apiservice_operator.check.metrics import Metrics
from apiservice_operator.core.model import Condition
from apiservice_operator.core.path import PathProbeMode
from apiservice_operator.core.settings import Settings
from apiservice_operator.kube import resync
from apiservice_operator.kube.autoscalers import AutoscalerReader
from apiservice_operator.kube.client import WRITE_TIMEOUT, Credentials, write_conditions
from apiservice_operator.kube.events import EventRecorder
from apiservice_operator.kube.identity import ProbeIdentity
from apiservice_operator.kube.leader import LeaderElector
from apiservice_operator.kube.permissions import keep_checking, needed
from apiservice_operator.probing.clientview import ClientViewReader
from apiservice_operator.probing.pathcheck import ClusterAccess, PathChecker, effective_mode
from apiservice_operator.probing.probe import Prober, inspect_tls
from apiservice_operator.probing.serverdocs import ask_server
from apiservice_operator.run import heap
from apiservice_operator.run.adapter import IndexInputs, Watches
from apiservice_operator.run.referenced import Referenced
from apiservice_operator.serve.explain import explain
from apiservice_operator.serve.health import HealthState, serve_explain
from apiservice_operator.serve.health import serve as serve_health

log = logging.getLogger("apiservice_operator")
LEASE_MARGIN = 1.0  # seconds between an old leader's last possible write and a standby's earliest takeover
KOPF_STOP_GRACE = 1.0  # seconds kopf gets to end its watches before they are cancelled
IDENTITY_WAIT = 10.0  # seconds the first probes wait for the probe identity's first token

def make_probe_identity(settings: Settings, credentials: Credentials) -> ProbeIdentity | None:
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
    if mode is PathProbeMode.OFF:
        return None
    through = {PathProbeMode.INSTANCES: "each kube-apiserver instance",
               PathProbeMode.AUTO: f"each kube-apiserver instance where they all answer /livez from here, "
                                   f"else {access.server} (auto: decided at the first check)"}.get(mode, access.server)
    log.info("path probe: through %s", through)
    return PathChecker(mode=mode, access=access, slices=inputs, probe=prober.probe_every, identity=identity,
                       clock=time.monotonic, pick=settings.picked_instances)


def renew_deadline(settings: Settings) -> float:
    return settings.lease_duration * 2 / 3  # client-go's ratio: 15 s Lease, 10 s to renew it


def write_deadline(settings: Settings) -> float:
    """A status write's whole deadline. With leader election it must end before a standby may take
    the Lease: a write starts only within the renew deadline (the controller's license), so one that
    ends within lease_duration - renew_deadline - a margin lands before any other replica leads
    (both write as the same field manager: nothing else would keep their writes apart)."""
    if not settings.leader_election:
        return WRITE_TIMEOUT
    return max(0.5, min(WRITE_TIMEOUT, settings.lease_duration - renew_deadline(settings) - LEASE_MARGIN))


def _unbounded() -> float:
    return math.inf


def _nothing() -> str | None:
    return None


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
    holder = settings.identity or default_identity()  # who holds the Lease and files Events
    lease_namespace = settings.lease_namespace or default_lease_namespace()
    credentials = Credentials(settings.kubeconfig)
    await credentials.load()
    prober_id = make_probe_identity(settings, credentials)
    # the operator's own token never leaves for an aggregated server: only the probe identity's
    metrics = Metrics()
    token = prober_id.token if prober_id is not None else _nothing
    prober = Prober(settings.probe_timeout, token, on_connection=metrics.probe_connections.inc)
    inputs = IndexInputs()
    health = HealthState(leader_election=settings.leader_election)
    recorder = EventRecorder(credentials, settings.events_namespace, holder,
                             on_outcome=lambda outcome: metrics.events.labels(outcome=outcome).inc())

    elector = None
    if settings.leader_election:
        elector = LeaderElector(
            credentials, lease_namespace, settings.lease_name, holder,
            lease_duration=settings.lease_duration, renew_deadline=renew_deadline(settings),
            retry_period=max(0.5, settings.lease_duration / 7.5))
    within = write_deadline(settings)
    checker = path_checker(settings, credentials, inputs, prober, prober_id)
    # the clients' view: each instance's aggregated discovery, read as the probe identity
    clients = (ClientViewReader(checker.access.ca, token, settings.probe_timeout,
                                ask=functools.partial(ask_server, prober),
                                on_connection=metrics.probe_connections.inc)
               if checker is not None else None)

    async def write(name: str, conditions: Sequence[Condition]) -> str | None:
        return await write_conditions(credentials, name, conditions, within=within)

    controller = Controller(settings=settings, inputs=inputs, probe=prober.probe_discovery, write=write,
                            metrics=metrics, record_event=recorder.record, silent=prober.silence.silent,
                            path=checker, clients=clients, consumers=AutoscalerReader(credentials).stalled,
                            license=elector.license if elector is not None else _unbounded,
                            token_problem=prober_id.token_problem if prober_id is not None else _nothing)
    prober.on_answer = controller.answered_again
    health.problems = controller.problems
    # the Services, EndpointSlices and Terminating Namespaces the APIServices reference, and no others
    referenced = Referenced(credentials, inputs.apiservices_of, path_probe=checker is not None)
    referenced.on_check = controller.changed_now
    inputs.referenced = referenced
    metrics.watch_counters(lambda: [(w.name, w.received, w.lists, w.watch_requests) for w in referenced.watches])
    watches = Watches(settings, {"controller": controller}, credentials, inputs, health, resync.Watched(),
                      on_start=lambda: take_signals_back())

    perms = needed(settings.events_namespace, lease_namespace if elector else None, settings.lease_name,
                   (prober_id.namespace, prober_id.name) if prober_id else None)

    ready = asyncio.Event()
    stop_requested = stop or asyncio.Event()
    # kopf waits up to 5 s for any task spawned after its start (our checks among them) before it
    # exits: so on SIGTERM our own loop stops first, the Lease is released, then kopf is told.
    kopf_stop = asyncio.Event()
    # the controller's own pipeline, traced (a copy built here by hand lacked the token problem's words)
    traced = controller.pipeline.traced(prober.probe_every, inspect_tls)

    async def explain_one(name: str) -> dict[str, Any] | None:
        return await explain(name, traced, controller.backend_changes.get(name))

    servers = []
    if settings.metrics_port:
        servers.append(await serve_health(settings.metrics_port, health, metrics))
    if settings.explain_port:
        servers.append(await serve_explain(settings.explain_port, explain_one))
    background = [
        asyncio.create_task(_heartbeat(health), name="heartbeat"),
        asyncio.create_task(heap.give_back_every(), name="heap trim"),
        asyncio.create_task(recorder.run(), name="events"),
        asyncio.create_task(keep_checking(credentials, perms, controller.problems), name="permissions"),
        asyncio.create_task(referenced.run(), name="referenced watches"),
        asyncio.create_task(_probe_loop(controller, ready, elector, health, metrics, prober_id,
                                        lambda: referenced.first_sync(inputs.referenced_services())),
                       name="probe loop"),
    ]
    if prober_id is not None:
        background.append(asyncio.create_task(prober_id.run(), name="probe identity"))
    if settings.resync_interval > 0:
        background.append(asyncio.create_task(
            _resync_loop(settings.resync_interval, ready, credentials, watches, controller),
            name="resync"))
    if elector is not None:
        background.append(asyncio.create_task(elector.run(), name="leader election"))

    async def stop_ours() -> None:
        for task in reversed(background):  # the probe loop stops before the Lease is released
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    kopf_task = asyncio.create_task(watches.run(ready, kopf_stop, holder), name="kopf")
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
        for server in servers:
            await server.cleanup()
        await prober.aclose()
        if clients is not None:
            await clients.aclose()
        await credentials.close()


async def _resync_loop(interval: float, ready: asyncio.Event, credentials: Credentials, watches: Watches,
                       controller: Controller) -> None:
    await ready.wait()
    while True:
        await asyncio.sleep(interval)
        for kind in resync.KINDS:
            try:
                ghosts = await resync.find_ghosts(credentials, kind, watches.watched)
            except Exception as exc:  # the API may be down: the watches will say so louder
                log.warning("resync of %s failed: %r", kind.name, exc)
                continue
            for key in ghosts:
                watches.forget_ghost(key, controller)


async def _heartbeat(health: HealthState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        health.heartbeat = loop.time()
        await asyncio.sleep(1)


async def _probe_loop(controller: Controller, ready: asyncio.Event, elector: LeaderElector | None,
                      health: HealthState, metrics: Metrics, identity: ProbeIdentity | None,
                      synced: Callable[[], Awaitable[None]]) -> None:
    await ready.wait()
    await synced()
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
        metrics.forget_all()  # the new leader's gauges are the ones that count now
        log.info("stopped probing: leadership lost")


async def _lost(elector: LeaderElector | None) -> None:
    if elector is None:
        await asyncio.Event().wait()
        return
    await elector.not_leading.wait()
