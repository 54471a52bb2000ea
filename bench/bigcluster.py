"""The axis users have (issue 26): a few APIServices in a big cluster. 20 APIServices on the
bench's servers, then the same beside `unrelated` headless Services and as many EndpointSlices (10
endpoints each) in a namespace of their own, with a churn of slice updates: the operator's RSS, CPU
and what reaches it (its own count of objects received from the wire, per kind) with and without
them, and what kube-apiserver dispatched for ServiceAccounts (the operator's requests among them).

Each half starts a fresh operator once its objects are in place and measures it steady, then
during the churn (the same churn of slices in both halves: in the first, of slices that no
APIService references either, but only 50 of them exist)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests import builders
from tests.cluster import pki
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.kube import Kube, wait_for

from bench.scale import (
    OPERATOR_ARGS,
    Fleet,
    Operator,
    apiserver_dispatched,
    cpu_seconds,
    metric,
    operator_ready,
    parallel,
    rss_mib,
    scrape,
)
from bench.watcher import Watcher

APISERVICES = 20
ENDPOINTS_PER_SLICE = 10
SETTLE = 10.0  # seconds after every first verdict before the steady window
KINDS = ("services", "endpointslices", "namespaces")
SA_FLOWS = "service-accounts"  # the APF flow schema of ServiceAccounts' requests (the operator's among them)


@dataclass
class Half:
    unrelated: int
    ready_s: float  # from the operator's start to its /readyz (its watches synced)
    rss_mib: float
    steady_cpu_percent: float
    churn_cpu_percent: float
    churn_updates: int
    received: dict[str, float]  # objects received per kind, from the start to the end of the churn
    received_in_churn: float
    kube_sa_rps: float  # kube-apiserver's dispatched ServiceAccount requests during the churn


@dataclass
class BigCluster:
    without: Half
    with_them: Half
    created_s: float
    churn_rate: float
    churn_seconds: float


def _headless(namespace: str, name: str) -> dict[str, object]:
    body = builders.make_service(namespace, name)
    body["spec"]["clusterIP"] = "None"  # the local plane's range holds ~254 addresses
    return body


def _slice(namespace: str, name: str, generation: int) -> dict[str, object]:
    endpoints = [builders.make_endpoint(f"10.251.{(generation + i) % 250}.{i + 1}") for i in range(ENDPOINTS_PER_SLICE)]
    body = builders.make_slice(namespace, name, endpoints)
    body["metadata"]["name"] = f"{name}-slice"
    return body


def populate(kube: Kube, namespace: str, count: int) -> None:
    names = [f"unrelated-{i}" for i in range(count)]
    parallel(lambda n: kube.create(Kube.service_path(namespace), _headless(namespace, n)), names, workers=16)
    parallel(lambda n: kube.create(Kube.slice_path(namespace), _slice(namespace, n, 0)), names, workers=16)


def churn(kube: Kube, namespace: str, count: int, rate: float, seconds: float) -> int:
    """`rate` slice updates a second for `seconds`, round-robin over the `count` slices: each moves its
    endpoints (what a rollout does to a Service's slices)."""
    done, stop_at, i = 0, time.monotonic() + seconds, 0

    def one(k: str) -> None:
        name = f"unrelated-{int(k) % count}"
        kube.merge_patch(Kube.slice_path(namespace, f"{name}-slice"),
                         {"endpoints": _slice(namespace, name, int(k))["endpoints"]})

    while time.monotonic() < stop_at:
        tick = time.monotonic()
        batch = [str(k) for k in range(i, i + int(rate))]
        i += len(batch)
        parallel(one, batch, workers=16)
        done += len(batch)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return done


def _half(cp: ControlPlane, kube: Kube, kubeconfig: Path, workdir: Path, watcher: Watcher, fleet: Fleet,
          names: list[str], namespace: str, unrelated: int, rate: float, seconds: float, window: float,
          say: Callable[[str], None]) -> Half:
    port = free_port()
    op = Operator(kubeconfig, workdir / f"operator-big-{unrelated}.log", ["--metrics-port", str(port), *OPERATOR_ARGS])
    try:
        t0 = time.monotonic()
        op.start()
        assert op.popen is not None
        pid = op.popen.pid
        wait_for(lambda: operator_ready(port), 60, "operator ready", interval=0.2)
        ready = time.monotonic() - t0
        # the first operator's verdicts stand (a fresh one writes only what changed): wait for its sweep
        wait_for(lambda: metric(scrape(port), "apiservice_operator_sweep_duration_seconds") > 0, 120, "a sweep")
        time.sleep(SETTLE)
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        steady = 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - w0)
        m0, a0 = scrape(port), kube.http.get("/metrics").text
        c1, w1 = cpu_seconds(pid), time.monotonic()
        updates = churn(kube, namespace, max(1, unrelated), rate, seconds)
        span = time.monotonic() - w1
        during = 100 * (cpu_seconds(pid) - c1) / span
        m1, a1 = scrape(port), kube.http.get("/metrics").text
        received = {k: metric(m1, "apiservice_operator_watch_objects_received_total", f'kind="{k}"') for k in KINDS}
        in_churn = sum(received.values()) - sum(
            metric(m0, "apiservice_operator_watch_objects_received_total", f'kind="{k}"') for k in KINDS)
        half = Half(unrelated=unrelated, ready_s=ready,
                    rss_mib=rss_mib(pid), steady_cpu_percent=steady, churn_cpu_percent=during, churn_updates=updates,
                    received=received, received_in_churn=in_churn,
                    kube_sa_rps=(apiserver_dispatched(a1, SA_FLOWS) - apiserver_dispatched(a0, SA_FLOWS)) / span)
        say(f"big cluster, {unrelated} unrelated: RSS {half.rss_mib:.0f} MiB, CPU steady {steady:.2f} %, during "
            f"{updates} slice updates {during:.2f} %, objects received {received}")
        return half
    finally:
        op.stop()


def measure(cp: ControlPlane, kube: Kube, kubeconfig: Path, workdir: Path, ca: pki.KeyPair, watcher: Watcher,
            unrelated: int, rate: float, seconds: float, window: float, say: Callable[[str], None]) -> BigCluster:
    fleet = Fleet(kube, "big-apis", workdir, ca)
    try:
        names = fleet.create_apiservices(APISERVICES, "big")
        small, big = "big-few", "big-many"
        for namespace in (small, big):
            kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": namespace}})
        populate(kube, small, 50)
        without = _half(cp, kube, kubeconfig, workdir, watcher, fleet, names, small, 50, rate, seconds, window, say)
        say(f"big cluster: creating {unrelated} headless Services and {unrelated} EndpointSlices")
        t0 = time.monotonic()
        populate(kube, big, unrelated)
        created = time.monotonic() - t0
        with_them = _half(cp, kube, kubeconfig, workdir, watcher, fleet, names, big, unrelated, rate, seconds, window,
                          say)
        return BigCluster(without=without, with_them=with_them, created_s=created, churn_rate=rate,
                          churn_seconds=seconds)
    finally:
        fleet.delete()
        fleet.stop()


def table(result: BigCluster | None) -> list[str]:
    if result is None:
        return ["(not run: BENCH_BIG=0)"]
    w, b = result.without, result.with_them
    rows = ["| | without (50 unrelated) | with them | difference | target |", "|---|---|---|---|---|"]
    rss_ok = b.rss_mib - w.rss_mib <= 10
    cpu_ok = b.churn_cpu_percent - w.churn_cpu_percent <= 1
    rows.append(f"| unrelated Services + EndpointSlices | {w.unrelated} | {b.unrelated} | | |")
    rows.append(f"| operator RSS (MiB) | {w.rss_mib:.1f} | {b.rss_mib:.1f} | {b.rss_mib - w.rss_mib:+.1f} | "
                f"≤ +10: {'MET' if rss_ok else 'MISSED'} |")
    rows.append(f"| operator CPU, steady (% of a core) | {w.steady_cpu_percent:.2f} | {b.steady_cpu_percent:.2f} | "
                f"{b.steady_cpu_percent - w.steady_cpu_percent:+.2f} | |")
    rows.append(f"| operator CPU during the churn (% of a core) | {w.churn_cpu_percent:.2f} | "
                f"{b.churn_cpu_percent:.2f} | {b.churn_cpu_percent - w.churn_cpu_percent:+.2f} | "
                f"≤ +1: {'MET' if cpu_ok else 'MISSED'} |")
    rows.append(f"| slice updates in the churn | {w.churn_updates} | {b.churn_updates} | | |")
    rows.append(f"| objects received during the churn | {w.received_in_churn:.0f} | {b.received_in_churn:.0f} | | |")
    for kind in KINDS:
        rows.append(f"| {kind} received since start | {w.received[kind]:.0f} | {b.received[kind]:.0f} | | |")
    rows.append(f"| kube-apiserver: ServiceAccount requests/s in the churn | {w.kube_sa_rps:.1f} | {b.kube_sa_rps:.1f} "
                "| | |")
    rows.append(f"| operator ready after its start (s) | {w.ready_s:.1f} | {b.ready_s:.1f} | | |")
    return [*rows, "", f"Created in {result.created_s:.0f} s; churn {result.churn_rate:g} slice updates/s for "
                       f"{result.churn_seconds:g} s, of the unrelated slices."]
