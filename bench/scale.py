"""Scale: N APIServices sharing five servers, the operator started with all of them present. Time to
every first verdict, sweep time, the operator's CPU and memory at rest, status writes at rest and
per transition, and the requests it adds to kube-apiserver (its path probes among them). Also the
"mass hang": N APIServices behind one server that hangs (DESIGN 6b, kube-apiserver's weak spot)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests import builders
from tests.cluster import pki
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.harness import SERVER_PORT, ServerProcess, next_address
from tests.cluster.kube import Kube, wait_for
from tests.cluster.operator import OperatorProcess

from bench import load
from bench.latency import OPERATOR_SELECTOR
from bench.watcher import ANY, OURS, THEIRS, Watcher

SERVERS = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
FIRST_VERDICT_BOUND = 180.0
JUDGED_BOUND = 300.0
PASSED_BOUND = 120.0
# the operator as the bench runs it: every kube-apiserver instance asked by its address (the bench
# runs inside the test network namespace, where the advertise address is reachable)
OPERATOR_ARGS = ["--path-probe", "instances", "--selector", OPERATOR_SELECTOR]


class Operator(OperatorProcess):
    """The operator as tests run it; with BENCH_OPERATOR_PATH=/some/tree/operator, from that source
    tree instead, to measure a proposed change beside the committed code (the report says so)."""

    def start(self) -> Operator:
        tree = os.environ.get("BENCH_OPERATOR_PATH")
        if not tree:
            super().start()
            return self
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "apiservice_operator", "run", "--kubeconfig", str(self.kubeconfig), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONPATH": tree, "PYTHONUNBUFFERED": "1"})
        return self


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """VmRSS: now; VmHWM: the peak since the process started."""
    match = re.search(rf"{field_name}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match[1]) / 1024 if match else float("nan")


def metric(text: str, name: str, labels: str = "") -> float:
    """The sum of every sample of `name` whose label set contains `labels` (e.g. 'outcome="passed"')."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def apiserver_dispatched(text: str, flow_schema: str = "") -> float:
    """Requests kube-apiserver let through its API Priority and Fairness (from its /metrics), in one
    flow schema or all. Requests it proxies to an aggregated server (the path probes) are counted
    there, not in apiserver_request_total (measured: 20 proxied GETs added 0 to the latter)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and \
                (not flow_schema or f'flow_schema="{flow_schema}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def parallel(fn: Callable[[str], object], items: Iterable[str], workers: int = 8) -> None:
    """Creates and deletes of a thousand objects one by one took longer than what they prepare."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))


class Fleet:
    """`servers` multi-group servers, each behind its own Service, shared by N APIServices."""

    def __init__(self, kube: Kube, namespace: str, workdir: Path, ca: pki.KeyPair, servers: int = SERVERS) -> None:
        self.kube, self.namespace, self.ca = kube, namespace, ca
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.servers: list[ServerProcess] = []
        for k in range(servers):
            service = f"bench-{k}"
            dns = f"{service}.{namespace}.svc"
            cert, key = pki.issue(ca, dns, dns_names=(dns,), server=True).write(workdir, f"{namespace}-{service}")
            address = next_address()
            proc = ServerProcess(address, SERVER_PORT, workdir, [])
            proc.argv = [sys.executable, "-m", "bench.multigroup", "--address", address, "--port", str(SERVER_PORT),
                         "--cert", str(cert), "--key", str(key), "--state", str(proc.state_file)]
            proc.start()
            self.servers.append(proc)
            kube.create(Kube.service_path(namespace), builders.make_service(namespace, service))
            kube.create(Kube.slice_path(namespace), builders.make_slice(
                namespace, service, [builders.make_endpoint(address)]))
        self.names: list[str] = []

    def create_apiservices(self, n: int, label: str) -> list[str]:
        bodies = [builders.make_apiservice(
            f"g{i}.{self.namespace}.bench.example.com", "v1", service_namespace=self.namespace,
            service_name=f"bench-{i % len(self.servers)}", ca_bundle=self.ca.cert_pem, labels={"bench": label})
            for i in range(n)]
        names = [b["metadata"]["name"] for b in bodies]
        self.names += names
        by_name = dict(zip(names, bodies, strict=True))
        parallel(lambda name: self.kube.create(Kube.apiservice_path(), by_name[name]), names)
        return names

    def behind(self, server: int) -> list[str]:
        return [name for i, name in enumerate(self.names) if i % len(self.servers) == server]

    def delete(self) -> None:
        parallel(lambda name: self.kube.delete(Kube.apiservice_path(name)), self.names)
        self.names = []

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def wait_routed(kube: Kube, names: list[str], bound: float) -> tuple[float | None, int]:
    """Until kube-apiserver serves every APIService's discovery through its proxy: (seconds, how many
    it serves). Its Available turns True well before that (measured: with 1,000 new APIServices its
    proxy answered `404 page not found` for minutes while Available said True), and the operator's
    path probe would report exactly that, which is kube-apiserver's start-up, not ours."""
    t0 = time.monotonic()
    pending = list(names)

    def serves(name: str) -> bool:
        try:
            return kube.http.get(f"/apis/{name.split('.', 1)[1]}/{name.split('.', 1)[0]}").status_code == 200
        except httpx.HTTPError:
            return False

    while pending and time.monotonic() - t0 < bound:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(serves, pending))
        pending = [name for name, ok in zip(pending, answers, strict=True) if not ok]
        if pending:
            time.sleep(1)
    return (time.monotonic() - t0 if not pending else None), len(names) - len(pending)


def operator_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


class Profiler:
    """py-spy on a running process, raw (collapsed) stacks, until stop() (SIGINT makes it write)."""

    def __init__(self, pid: int, out: Path, duration: float | None = None) -> None:
        self.out = out
        argv = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--nonblocking",
                "--rate", "100"]
        if duration is not None:
            argv += ["--duration", str(max(1, int(duration)))]
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            self.proc = None  # no py-spy: the report says "(no profile samples)"

    def stop(self) -> str:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out.read_text() if self.out.exists() else ""


@dataclass
class ScaleResult:
    n: int
    first_verdict_median_s: float | None
    first_verdicts_s: float | None  # all of them; None: not all within the bound
    all_passed_s: float | None  # every one True (they are all healthy); None: not within the bound
    routed_s: float | None  # kube-apiserver's own start-up: from Available True on all to serving all
    sweep_s: float
    interval_s: float
    window_s: float
    cpu_percent: float
    kube_cpu_percent: float  # kube-apiserver's, with the operator running
    kube_cpu_without_percent: float  # and in a window of the same kind without it
    rss_mib: float
    peak_rss_mib: float
    writes_steady: float
    flipped: int
    writes_for_flip: float
    probes_per_s: float  # checks of APIServices (each probes every endpoint)
    path_probes_per_s: float  # the operator's own count: requests through kube-apiserver
    connections_per_s: float  # TCP+TLS connections the prober opened, in the steady window
    kube_sa_rps: float  # requests kube-apiserver dispatched for ServiceAccounts (the operator's and the probe's)
    kube_rps_with: float  # every request kube-apiserver dispatched, with the operator
    kube_rps_without: float
    others: load.Load | None = None  # the machine apart from the benchmark, during the window
    profile: str = ""
    startup_profile: str = ""


def measure(cp: ControlPlane, kube: Kube, kubeconfig: Path, workdir: Path, ca: pki.KeyPair, watcher: Watcher,
            n: int, window: float, profile: bool, say: Callable[[str], None]) -> ScaleResult:
    fleet = Fleet(kube, f"scale-{n}", workdir, ca)
    port = free_port()
    op = Operator(kubeconfig, workdir / f"operator-{n}.log", ["--metrics-port", str(port), *OPERATOR_ARGS])
    kube_pid = cp._apiserver.popen.pid if cp._apiserver.popen is not None else None
    try:
        names = fleet.create_apiservices(n, str(n))
        judged = watcher.wait_all(names, THEIRS, "True", 0, time.monotonic() + JUDGED_BOUND)
        routed, serving = wait_routed(kube, names, JUDGED_BOUND)
        say(f"N = {n}: created; kube-apiserver judged {sum(v is not None for v in judged.values())} and serves "
            f"{serving} (after {routed} s more); the operator starts")
        # "start" is the operator's process start with every APIService already there (a restart,
        # a rollout): its imports, kopf's listing, the probe identity's token and every first probe
        t0 = time.monotonic()
        op.start()
        assert op.popen is not None
        pid = op.popen.pid
        starting = Profiler(pid, workdir / f"profile-start-{n}.txt") if profile else None
        firsts = watcher.wait_all(names, OURS, ANY, t0, t0 + FIRST_VERDICT_BOUND)
        times = sorted(t - t0 for t in firsts.values() if t is not None)
        startup_profile = starting.stop() if starting else ""
        every = times[-1] if len(times) == n else None
        passed = watcher.wait_all(names, OURS, "True", t0, t0 + PASSED_BOUND)
        passed_times = sorted(t - t0 for t in passed.values() if t is not None)
        all_passed = passed_times[-1] if len(passed_times) == n else None
        say(f"N = {n}: first verdicts {len(times)}/{n}, all after {every}; Passed {len(passed_times)}, all after "
            f"{all_passed}")
        wait_for(lambda: operator_ready(port), 60, "operator ready")
        # the window starts once a full sweep has ended after the start-up burst
        metrics = scrape(port)
        interval = metric(metrics, "apiservice_operator_probe_interval_seconds")
        time.sleep(interval + 3)
        wait_for(lambda: metric(scrape(port), "apiservice_operator_sweep_duration_seconds") > 0, 120, "a sweep")

        meter = load.Meter()
        meter.start()
        w0, c0 = time.monotonic(), cpu_seconds(pid)
        k0 = cpu_seconds(kube_pid) if kube_pid else 0.0
        a0, m0 = kube.http.get("/metrics").text, scrape(port)
        steady = Profiler(pid, workdir / f"profile-{n}.txt", window) if profile else None
        time.sleep(window)
        w1, c1 = time.monotonic(), cpu_seconds(pid)
        k1 = cpu_seconds(kube_pid) if kube_pid else 0.0
        a1, m1 = kube.http.get("/metrics").text, scrape(port)
        others = meter.stop()
        rss, peak = rss_mib(pid), rss_mib(pid, "VmHWM")
        profile_text = steady.stop() if steady else ""
        span = w1 - w0

        def rate(name: str) -> float:
            return (metric(m1, name) - metric(m0, name)) / span

        writes = "apiservice_operator_status_writes_total"
        result = ScaleResult(
            n=n, first_verdict_median_s=times[len(times) // 2] if times else None, first_verdicts_s=every,
            all_passed_s=all_passed, routed_s=routed,
            sweep_s=metric(m1, "apiservice_operator_sweep_duration_seconds"),
            interval_s=metric(m1, "apiservice_operator_probe_interval_seconds"), window_s=span,
            cpu_percent=100 * (c1 - c0) / span, kube_cpu_percent=100 * (k1 - k0) / span,
            kube_cpu_without_percent=float("nan"), rss_mib=rss, peak_rss_mib=peak,
            writes_steady=metric(m1, writes) - metric(m0, writes), flipped=0, writes_for_flip=float("nan"),
            probes_per_s=rate("apiservice_operator_probes_total"),
            path_probes_per_s=rate("apiservice_operator_path_probes_total"),
            connections_per_s=rate("apiservice_operator_probe_connections_opened_total"),
            kube_sa_rps=(apiserver_dispatched(a1, "service-accounts") - apiserver_dispatched(a0, "service-accounts"))
            / span,
            kube_rps_with=(apiserver_dispatched(a1) - apiserver_dispatched(a0)) / span, kube_rps_without=float("nan"),
            others=others, profile=profile_text, startup_profile=startup_profile,
        )

        # one transition for every APIService behind server 0: status writes per transition
        flipping = fleet.behind(0)
        before = metric(scrape(port), writes)
        t2 = time.monotonic()
        fleet.servers[0].set_state(mode="status", status=500)
        watcher.wait_all(flipping, OURS, "False", t2, t2 + 120)
        time.sleep(2)
        result.flipped = len(flipping)
        result.writes_for_flip = (metric(scrape(port), writes) - before) / max(1, len(flipping))
        fleet.servers[0].set_state(mode="healthy")
        op.stop()

        # the same kind of window without the operator: what remains is kube-apiserver's own work
        b0, bk0, bt0 = apiserver_dispatched(kube.http.get("/metrics").text), \
            cpu_seconds(kube_pid) if kube_pid else 0.0, time.monotonic()
        time.sleep(min(window, 20))
        bt1 = time.monotonic()
        result.kube_rps_without = (apiserver_dispatched(kube.http.get("/metrics").text) - b0) / (bt1 - bt0)
        result.kube_cpu_without_percent = 100 * ((cpu_seconds(kube_pid) if kube_pid else 0.0) - bk0) / (bt1 - bt0)
        return result
    finally:
        op.stop()
        fleet.delete()
        fleet.stop()


@dataclass
class MassHang:
    n: int
    bound_s: float
    ours: list[float] = field(default_factory=list)  # seconds to each flip seen within the bound, sorted
    theirs: list[float] = field(default_factory=list)
    interval_s: float = float("nan")
    profile: str = ""
    healthy: int = 0  # of the n, those both sides called Available when the server stopped: they can flip

    @staticmethod
    def first_half_all(times: list[float], n: int) -> tuple[float | None, float | None, float | None]:
        """n: how many could flip."""
        return (times[0] if times else None, times[n // 2] if len(times) > n // 2 else None,
                times[-1] if len(times) == n else None)


def mass_hang(kube: Kube, kubeconfig: Path, workdir: Path, ca: pki.KeyPair, watcher: Watcher, n: int,
              bound: float, say: Callable[[str], None]) -> MassHang:
    """kube-apiserver's Available is read on the same objects (there are no twins here): its
    re-checks triggered by our writes are included, and do not help it, as 5 workers that wait out
    5 s per hung check can judge only one APIService a second whatever triggers them."""
    fleet = Fleet(kube, f"hang-{n}", workdir, ca, servers=1)
    port = free_port()
    op = Operator(kubeconfig, workdir / f"operator-hang-{n}.log", ["--metrics-port", str(port), *OPERATOR_ARGS])
    try:
        names = fleet.create_apiservices(n, f"hang{n}")
        watcher.wait_all(names, THEIRS, "True", 0, time.monotonic() + JUDGED_BOUND)
        wait_routed(kube, names, JUDGED_BOUND)
        t_start = time.monotonic()
        op.start()
        assert op.popen is not None
        watcher.wait_all(names, OURS, "True", t_start, t_start + PASSED_BOUND)
        wait_for(lambda: operator_ready(port), 60, "operator ready")
        interval = metric(scrape(port), "apiservice_operator_probe_interval_seconds")
        time.sleep(interval + 3)
        # only what both call healthy at the moment of the hang can flip
        names = [nm for nm in names if watcher.current(nm, OURS) == "True" and watcher.current(nm, THEIRS) == "True"]
        say(f"mass hang N = {n}: {len(names)} pass on both sides; the server stops")
        profiler = Profiler(op.popen.pid, workdir / f"profile-hang-{n}.txt", min(bound, 30))
        t0 = time.monotonic()
        fleet.servers[0].signal(signal.SIGSTOP)
        ours = watcher.wait_all(names, OURS, "False", t0, t0 + bound)
        theirs = watcher.wait_all(names, THEIRS, "False", t0, t0 + bound)
        result = MassHang(n, bound, sorted(t - t0 for t in ours.values() if t is not None),
                          sorted(t - t0 for t in theirs.values() if t is not None), interval, profiler.stop(),
                          healthy=len(names))
        return result
    finally:
        fleet.servers[0].signal(signal.SIGCONT)
        op.stop()
        fleet.delete()
        fleet.stop()
