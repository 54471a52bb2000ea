"""Scale: N APIServices sharing five servers. Sweep time, operator CPU and memory, status writes
per transition, and the API requests per second the operator adds in steady state. Also the
"mass hang": N APIServices behind one server that hangs (DESIGN 6b, kube-apiserver's weak spot)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests import builders
from tests.cluster import pki
from tests.cluster.controlplane import REPO, ControlPlane
from tests.cluster.harness import SERVER_PORT, ServerProcess, next_address
from tests.cluster.kube import Kube, wait_for
from tests.cluster.operator import OperatorProcess

from bench.watcher import OURS, THEIRS, Watcher

SERVERS = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ScaleResult:
    n: int
    first_verdicts_s: float
    sweep_s: float
    cpu_percent: float
    peak_rss_mib: float
    writes_steady: float
    flipped: int
    writes_for_flip: float
    operator_rps: float
    profile: str = ""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match[1]) / 1024 if match else float("nan")


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def apiserver_requests(kube: Kube) -> float:
    """Every request kube-apiserver served except long-running watches."""
    text = kube.http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line)


class Fleet:
    """Five multi-group servers, each behind its own Service, shared by N APIServices."""

    def __init__(self, kube: Kube, namespace: str, workdir: Path, ca: pki.KeyPair) -> None:
        self.kube, self.namespace, self.ca = kube, namespace, ca
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.servers: list[ServerProcess] = []
        for k in range(SERVERS):
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

    def create_apiservices(self, n: int, label: str, servers: int = SERVERS) -> list[str]:
        names = []
        for i in range(n):
            body = builders.make_apiservice(
                f"g{i}.{self.namespace}.bench.example.com", "v1", service_namespace=self.namespace,
                service_name=f"bench-{i % servers}", ca_bundle=self.ca.cert_pem, labels={"bench": label})
            self.kube.create(Kube.apiservice_path(), body)
            names.append(body["metadata"]["name"])
        return names

    def delete(self, names: list[str]) -> None:
        for name in names:
            self.kube.delete(Kube.apiservice_path(name))

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def operator_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ours_true(kube: Kube, label: str) -> int:
    items = kube.get(Kube.apiservice_path(), labelSelector=f"bench={label}")["items"]
    return sum(1 for o in items for c in (o.get("status") or {}).get("conditions") or []
               if c["type"] == OURS and c["status"] == "True")


def measure(cp: ControlPlane, kube: Kube, kubeconfig: Path, workdir: Path, ca: pki.KeyPair, n: int,
            window: float, profile: bool) -> ScaleResult:
    fleet = Fleet(kube, f"scale-{n}", workdir, ca)
    port = 18900 + n % 97
    op = OperatorProcess(kubeconfig, workdir / f"operator-{n}.log", ["--metrics-port", str(port)]).start()
    assert op.popen is not None
    pid = op.popen.pid
    names: list[str] = []
    try:
        wait_for(lambda: operator_ready(port), 60, "operator ready")
        t0 = time.monotonic()
        names = fleet.create_apiservices(n, str(n))
        wait_for(lambda: ours_true(kube, str(n)) == n, 600, f"{n} verdicts", interval=0.5)
        first = time.monotonic() - t0
        time.sleep(12)  # one full periodic interval after the burst, so the window is steady
        scrape = lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text  # noqa: E731
        w0, c0, r0, m0 = time.monotonic(), cpu_seconds(pid), apiserver_requests(kube), scrape()
        profile_text = ""
        if profile:
            out = workdir / f"profile-{n}.txt"
            subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(int(window)),
                            "--format", "raw", "--output", str(out), "--nonblocking"],
                           capture_output=True, timeout=window + 60)
            profile_text = out.read_text() if out.exists() else ""
        else:
            time.sleep(window)
        w1, c1, r1, m1 = time.monotonic(), cpu_seconds(pid), apiserver_requests(kube), scrape()
        cpu = 100 * (c1 - c0) / (w1 - w0)
        rps_with = (r1 - r0) / (w1 - w0)
        sweep = metric(m1, "apiservice_operator_sweep_duration_seconds")
        writes = "apiservice_operator_status_writes_total"
        writes_steady = metric(m1, writes) - metric(m0, writes)
        # one transition per APIService behind server 0
        before = metric(m1, "apiservice_operator_status_writes_total")
        fleet.servers[0].set_state(mode="status", status=500)
        flipped = len([nm for i, nm in enumerate(names) if i % SERVERS == 0])
        wait_for(lambda: ours_true(kube, str(n)) == n - flipped, 120, "flips", interval=0.5)
        time.sleep(2)
        writes_flip = metric(scrape(), "apiservice_operator_status_writes_total") - before
        rss = peak_rss_mib(pid)
        op.stop()
        # the same window without the operator: what remains is kube-apiserver's own traffic
        b0, bt0 = apiserver_requests(kube), time.monotonic()
        time.sleep(min(window, 20))
        rps_without = (apiserver_requests(kube) - b0) / (time.monotonic() - bt0)
        return ScaleResult(n, first, sweep, cpu, rss, writes_steady, flipped, writes_flip / max(1, flipped),
                           rps_with - rps_without, profile_text)
    finally:
        op.stop()
        fleet.delete(names)
        fleet.stop()


@dataclass
class MassHang:
    n: int
    ours: tuple[float | None, float | None, float | None]
    theirs: tuple[float | None, float | None, float | None]


def mass_hang(kube: Kube, kubeconfig: Path, workdir: Path, ca: pki.KeyPair, watcher: Watcher, n: int) -> MassHang:
    fleet = Fleet(kube, f"hang-{n}", workdir, ca)
    op = OperatorProcess(kubeconfig, workdir / f"operator-hang-{n}.log", ["--metrics-port", "0"]).start()
    names: list[str] = []
    try:
        names = fleet.create_apiservices(n, f"hang{n}", servers=1)
        for name in names:
            for which in (OURS, THEIRS):
                watcher.wait(name, which, "True", 0, 300)
        t0 = time.monotonic()
        fleet.servers[0].signal(signal.SIGSTOP)
        result: dict[str, tuple[float | None, float | None, float | None]] = {}
        for which in (OURS, THEIRS):
            flips = [watcher.wait(name, which, "False", t0, 300) for name in names]
            times = sorted(t - t0 for t in flips if t is not None)
            missing = n - len(times)
            if missing:
                result[which] = (times[0] if times else None, times[n // 2] if len(times) > n // 2 else None, None)
            else:
                result[which] = (times[0], times[n // 2], times[-1])
        return MassHang(n, result[OURS], result[THEIRS])
    finally:
        fleet.servers[0].signal(signal.SIGCONT)
        op.stop()
        fleet.delete(names)
        fleet.stop()


_ = REPO  # the servers run from the repository root (cwd), like the test harness's
