"""Prometheus metrics, prefix apiservice_operator_. The unavailable gauge has the semantics of
kube-apiserver's aggregator_unavailable_apiservice (1 while not Available), so alerts port over."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from apiservice_operator.core.clientview import ClientView, Freshness, OpenAPI
from apiservice_operator.core.decide.clients import DISCOVERY_STALE, OPENAPI_UNAVAILABLE
from apiservice_operator.core.model import Condition, ErrorKind, ProbePlan, ProbeResult, Status
from apiservice_operator.core.path import PathOutcome, PathResult

# discovery must answer within 5 s; finer buckets below 1 s where healthy servers live
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.unavailable = Gauge(
            "apiservice_operator_unavailable_apiservice",
            "1 while our Available condition on the APIService is not True (as aggregator_unavailable_apiservice)",
            ["name"], registry=r)
        self.transitions = Counter(
            "apiservice_operator_transitions_total",
            "Changes of our Available or Degraded condition's status or reason",
            ["name", "type", "status", "reason"], registry=r)
        self.discovery_latency = Histogram(
            "apiservice_operator_discovery_duration_seconds",
            "Time of one discovery probe of one endpoint, failed ones included",
            ["name"], buckets=LATENCY_BUCKETS, registry=r)
        self.probe_errors = Counter(
            "apiservice_operator_probe_errors_total", "Endpoint probes that failed, by kind",
            ["kind"], registry=r)
        for kind in ErrorKind:
            self.probe_errors.labels(kind=str(kind))
        self.path_probes = Counter(
            "apiservice_operator_path_probes_total",
            "Discovery requests through kube-apiserver (one per instance), by what the answer meant",
            ["outcome"], registry=r)
        for outcome in PathOutcome:
            self.path_probes.labels(outcome=str(outcome))
        self.certificate_expiry = Gauge(
            "apiservice_operator_certificate_expiry_timestamp_seconds",
            "Unix time when the first of the APIService's certificates ends: the leaf each passing endpoint "
            "serves and the caBundle's CAs", ["name"], registry=r)
        self.clients_view = Counter(
            "apiservice_operator_clients_view_total",
            "The group/version as each kube-apiserver instance showed it to clients, one per instance and check: "
            "document discovery (aggregated discovery, GET /apis v2) with outcome current, stale, missing, empty "
            "or unread; document openapi (/openapi/v3) with outcome listed, missing, failing or unread",
            ["document", "outcome"], registry=r)
        for outcome in (*Freshness, "unread"):
            self.clients_view.labels(document="discovery", outcome=str(outcome).lower())
        for outcome in (*OpenAPI, "unread"):
            self.clients_view.labels(document="openapi", outcome=str(outcome).lower())
        self.discovery_stale = Gauge(
            "apiservice_operator_discovery_stale_instances",
            "kube-apiserver instances whose aggregated discovery has the APIService Stale, missing or without "
            "its resources, while our verdict says DiscoveryStale (0 otherwise: also while kube-apiserver may "
            "still be catching up, and when another hop is what breaks)", ["name"], registry=r)
        self.openapi_unavailable = Gauge(
            "apiservice_operator_openapi_unavailable_instances",
            "kube-apiserver instances whose /openapi/v3 lacks the APIService's group/version or fails its document, "
            "while our Degraded says OpenAPIUnavailable (0 otherwise)", ["name"], registry=r)
        self.blocked_namespaces = Gauge(
            "apiservice_operator_blocked_namespaces",
            "Terminating namespaces whose deletion waits on this APIService's discovery "
            "(their NamespaceDeletionDiscoveryFailure condition names its group/version)", ["name"], registry=r)
        self.stalled_autoscalers = Gauge(
            "apiservice_operator_stalled_autoscalers",
            "HorizontalPodAutoscalers that cannot scale while this metrics APIService is not Available (their "
            "ScalingActive=False names a failed request to its API); read only while it is not", ["name"], registry=r)
        self.probes = Counter("apiservice_operator_probes_total", "APIService probes (all endpoints)", registry=r)
        self.probe_connections = Counter(
            "apiservice_operator_probe_connections_opened_total",
            "TCP+TLS connections the prober opened (to endpoints and kube-apiserver instances): a rate near the "
            "probe rate means connections are not reused", registry=r)
        self.status_writes = Counter(
            "apiservice_operator_status_writes_total", "Server-side applies of our conditions", registry=r)
        self.status_write_errors = Counter(
            "apiservice_operator_status_write_errors_total", "Failed status writes", registry=r)
        self.events = Counter(
            "apiservice_operator_events_total",
            "Kubernetes Events about APIServices, by outcome: recorded, failed (after its retries) or dropped "
            "(the queue was full)", ["outcome"], registry=r)
        self.queue_depth = Gauge("apiservice_operator_queue_depth", "APIServices waiting in the probe queue",
                                 registry=r)
        self.inflight = Gauge("apiservice_operator_checks_in_flight", "APIServices being checked now", registry=r)
        self.last_sweep = Gauge(
            "apiservice_operator_last_sweep_timestamp_seconds",
            "Unix time when every handled APIService had last been checked at least once since the sweep before",
            registry=r)
        self.sweep_duration = Gauge(
            "apiservice_operator_sweep_duration_seconds", "How long the last full sweep took", registry=r)
        self.apiservices = Gauge("apiservice_operator_apiservices", "APIServices handled", registry=r)
        self.probe_interval = Gauge(
            "apiservice_operator_probe_interval_seconds",
            "The periodic re-probe interval now in force (shorter with few APIServices, see --max-probe-rate)",
            registry=r)
        self.leader = Gauge("apiservice_operator_leader", "1 on the replica that holds the Lease", registry=r)

    def watch_counters(self, read: Callable[[], Sequence[tuple[str, int, int, int]]]) -> None:
        """Our selective watches' own counts (kind, objects received, lists, watch requests), read at
        each scrape: what reaches the operator from the wire, per kind."""
        self.registry.register(_WatchCollector(read))

    def observe_probes(self, name: str, results: list[ProbeResult]) -> None:
        self.probes.inc()
        histogram = self.discovery_latency.labels(name=name)
        for result in results:
            histogram.observe(result.latency)
            if result.error is not None:
                self.probe_errors.labels(kind=str(result.error)).inc()

    def observe_path(self, results: Sequence[PathResult]) -> None:
        for result in results:
            self.path_probes.labels(outcome=str(result.outcome)).inc()

    def observe_clients(self, name: str, view: ClientView | None, available: Condition,
                        degraded: Condition) -> None:
        if view is None:
            for metric in (self.discovery_stale, self.openapi_unavailable):
                with contextlib.suppress(KeyError):
                    metric.remove(name)
            return
        for v in view.instances:
            self.clients_view.labels(document="discovery",
                                     outcome=str(v.freshness).lower() if v.freshness else "unread").inc()
            self.clients_view.labels(document="openapi",
                                     outcome=str(v.openapi).lower() if v.openapi else "unread").inc()
        stale = sum(1 for v in view.read() if v.freshness is not Freshness.CURRENT)
        said_stale = DISCOVERY_STALE in (available.reason, degraded.reason)
        self.discovery_stale.labels(name=name).set(stale if said_stale else 0)
        missing = sum(1 for v in view.openapi_read() if v.openapi is not OpenAPI.LISTED)
        self.openapi_unavailable.labels(name=name).set(missing if degraded.reason == OPENAPI_UNAVAILABLE else 0)

    def observe_certificates(self, name: str, plan: ProbePlan, results: Sequence[ProbeResult]) -> None:
        ends = [c.not_after for p in results if p.ok for c in p.served] + [c.not_after for c in plan.ca_certificates]
        if ends:
            self.certificate_expiry.labels(name=name).set(
                datetime.datetime.fromisoformat(min(ends).replace("Z", "+00:00")).timestamp())
        else:
            with contextlib.suppress(KeyError):
                self.certificate_expiry.remove(name)

    def observe_conditions(self, name: str, available: Condition) -> None:
        self.unavailable.labels(name=name).set(0 if available.status is Status.TRUE else 1)

    def forget(self, name: str) -> None:
        """An APIService that went: every series labelled with it goes too (a deleted APIService's
        transitions_total stayed forever, one series per type, status and reason it ever had)."""
        for metric in (self.unavailable, self.discovery_latency, self.certificate_expiry, self.blocked_namespaces,
                       self.discovery_stale, self.openapi_unavailable, self.stalled_autoscalers):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for labels in [k for k in _label_sets(self.transitions) if k[0] == name]:
            with contextlib.suppress(KeyError):
                self.transitions.remove(*labels)

    def forget_all(self) -> None:
        """This replica stopped deciding (it lost the Lease): its per-APIService gauges would go on
        saying what it last saw, beside the new leader's, and alerts that take max or min across
        Pods would read a stale verdict."""
        for metric in (self.unavailable, self.certificate_expiry, self.blocked_namespaces, self.discovery_stale,
                       self.openapi_unavailable, self.stalled_autoscalers):
            metric.clear()


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps a labelled metric's children in _metrics; it has no public listing
    return [tuple(labels) for labels in metric._metrics]


class _WatchCollector(Collector):
    def __init__(self, read: Callable[[], Sequence[tuple[str, int, int, int]]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        received = CounterMetricFamily(
            "apiservice_operator_watch_objects_received",
            "Objects that reached the operator from kube-apiserver through its own watches (list items and "
            "watch events), per kind: only what the APIServices reference is selected on the server", labels=["kind"])
        requests = CounterMetricFamily(
            "apiservice_operator_watch_requests", "List and watch requests of the operator's own watches, per kind",
            labels=["kind", "verb"])
        for kind, objects, lists, watches in self.read():
            received.add_metric([kind], objects)
            requests.add_metric([kind, "list"], lists)
            requests.add_metric([kind, "watch"], watches)
        return [received, requests]
