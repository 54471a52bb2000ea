"""make bench: apiservice-operator and kube-apiserver's own availability controller, side by side.
Writes bench/results/<date>-<what>.md and .png.

    BENCH_REPS=10 BENCH_SIZES=10,100,1000 BENCH_HANG=1000 BENCH_WINDOW=30 make bench

- Latency: each fault on an APIService the operator handles and on its twin, which it does not
  (bench/latency.py says how they are kept apart); the endpoint faults on the local control plane,
  the user's-path faults (kube-apiserver instances cut from the server) on a second plane of two
  kube-apiservers at the same time (BENCH_PATH=0 leaves it out; it needs root and iptables;
  BENCH_FAULTS="answers 500,refused" runs only the faults whose names contain one of its words).
- Mass hang and scale on the first plane, one N after another; then the big cluster (BENCH_BIG unrelated
  Services and EndpointSlices, 10,000 by default, 0 leaves it out; bench/bigcluster.py).
The machine's load is measured before anything starts, and during each steady window.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from tests.cluster import pki
from tests.cluster.controlplane import KUBE_VERSION, REPO, ControlPlane, ensure_binaries, free_port
from tests.cluster.kube import Kube, wait_for
from tests.cluster.multiplane import MultiControlPlane, unavailable_reason
from tests.cluster.operator import install_manifests, service_account_kubeconfig

from bench import bigcluster, latency, load, report, scale, targets
from bench.watcher import Watcher

ENV = ("BENCH_REPS", "BENCH_SIZES", "BENCH_HANG", "BENCH_HANG_BOUND", "BENCH_WINDOW", "BENCH_PATH",
       "BENCH_FAULTS", "BENCH_OPERATOR_PATH", "BENCH_BIG", "BENCH_BIG_CHURN", "BENCH_BIG_SECONDS")


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _ints(name: str, default: str) -> list[int]:
    return [int(s) for s in os.environ.get(name, default).split(",") if s]


def _chosen(faults: list[latency.Fault]) -> list[latency.Fault]:
    """BENCH_FAULTS: only the faults whose names contain one of its comma-separated words (every fault
    when unset); one lane's figures, measured alone, in minutes rather than a whole run's."""
    words = [w.strip() for w in os.environ.get("BENCH_FAULTS", "").split(",") if w.strip()]
    return [f for f in faults if not words or any(w in f.name for w in words)]


class Plane:
    """A control plane with its watcher, admin client and the operator's ServiceAccount kubeconfig."""

    def __init__(self, cp: ControlPlane, work: Path) -> None:
        self.cp = cp
        self.kube = Kube(cp.server, cp.ssl_context())
        self.watcher = Watcher(cp.server, cp.ssl_context()).start()
        install_manifests(cp)
        self.kubeconfig = service_account_kubeconfig(cp, work / "sa.kubeconfig")

    def close(self) -> None:
        self.watcher.stop()
        self.kube.close()
        self.cp.stop()


def latency_phase(planes: dict[str, Plane], work: Path, ca: pki.KeyPair, reps: int) -> tuple[
        latency.Samples, dict[str, float]]:
    """Every lane of every plane at once, but the hung server's after the others (latency.ALONE);
    returns the samples and each plane's periodic interval."""
    samples = latency.Samples()
    threads: list[threading.Thread] = []
    later: list[tuple[list[latency.Fault], Callable[[str], latency.TwinAPI], Plane, str]] = []
    operators: dict[str, tuple[scale.Operator, int]] = {}
    apis: list[latency.TwinAPI] = []
    try:
        for key, plane in planes.items():
            (work / key).mkdir(exist_ok=True)
            namespace = f"lat-{key}"
            plane.kube.create("/api/v1/namespaces",
                              {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

            def make_api(service: str, plane: Plane = plane, namespace: str = namespace,
                         where: Path = work / key) -> latency.TwinAPI:
                api = latency.TwinAPI(plane.kube, namespace, service, f"{service}.{namespace}.bench.example.com",
                                      "v1", where, ca)
                apis.append(api)
                api.start_multigroup_servers(1)
                api.register_service()
                api.write_slice()
                api.register_both()
                return api

            port = free_port()
            op = scale.Operator(plane.kubeconfig, work / f"operator-latency-{key}.log",
                                ["--metrics-port", str(port), *scale.OPERATOR_ARGS]).start()
            operators[key] = (op, port)
            if key == "path":
                assert isinstance(plane.cp, MultiControlPlane)
                faults = _chosen(latency.path_faults(plane.cp))
            else:
                faults = _chosen([f for f in latency.ENDPOINT_FAULTS if f.name not in latency.ALONE])
                later.append((_chosen([f for f in latency.ENDPOINT_FAULTS if f.name in latency.ALONE]), make_api,
                              plane, f"{key[:4]}h"))
            threads += latency.start_lanes(faults, make_api, plane.watcher, reps, samples, prefix=f"{key[:4]}")
        for t in threads:
            t.join()
        for faults, make, plane, prefix in later:
            for t in latency.start_lanes(faults, make, plane.watcher, reps, samples, prefix=prefix):
                t.join()
        intervals = {}
        for key, (_, port) in operators.items():
            wait_for(lambda port=port: scale.operator_ready(port), 30, "operator ready")  # type: ignore[misc]
            intervals[key] = scale.metric(scale.scrape(port), "apiservice_operator_probe_interval_seconds")
        return samples, intervals
    finally:
        for op, _ in operators.values():
            op.stop()
        for api in apis:
            api.remove()


def main() -> int:
    reps = int(os.environ.get("BENCH_REPS", "10"))
    sizes = _ints("BENCH_SIZES", "10,100,1000")
    hang_sizes = _ints("BENCH_HANG", "1000")
    hang_bound = float(os.environ.get("BENCH_HANG_BOUND", "60"))
    window = float(os.environ.get("BENCH_WINDOW", "30"))
    with_path = os.environ.get("BENCH_PATH", "1") != "0"
    command = " ".join([*(f"{k}={os.environ[k]}" for k in ENV if k in os.environ), "make bench"])
    notes: list[str] = []
    if os.environ.get("BENCH_OPERATOR_PATH"):
        notes.append(f"THE OPERATOR RAN FROM {os.environ['BENCH_OPERATOR_PATH']}, not from this commit's operator/")

    say("measuring the machine's load before anything starts (10 s)")
    before = load.measure(10)
    say(before.describe())

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    work.chmod(0o711)  # the two-instance plane's kube-apiservers run as other uids below it
    bin_dir = ensure_binaries()
    planes: dict[str, Plane] = {}
    ca = pki.make_ca("bench-ca")
    closers: list[Callable[[], None]] = []
    try:
        planes["endpoints"] = Plane(ControlPlane(workdir=work / "cp", bin_dir=bin_dir).start(), work)
        closers.append(planes["endpoints"].close)
        why_not = unavailable_reason() if with_path else "BENCH_PATH=0"
        if why_not is None:
            (work / "multi").mkdir()
            (work / "multi").chmod(0o711)
            multi = MultiControlPlane(workdir=work / "multi" / "cp", bin_dir=bin_dir, instances=2).start()
            planes["path"] = Plane(multi, work / "multi")
            closers.append(planes["path"].close)
        else:
            notes.append(f"user's-path faults left out: {why_not}")

        say(f"detection latency: {reps} repetitions of each fault, every lane at once but the hung server's, after")
        samples, intervals = latency_phase(planes, work, ca, reps)
        if "path" in planes:
            planes.pop("path").close()
            closers.pop()
        notes.append("latency: the endpoint faults on one kube-apiserver; the user's-path faults on a second "
                     "plane of two kube-apiservers (one etcd, each its own uid, cut with iptables' owner match), "
                     "both planes at once, the hung server's lane after the others (latency.ALONE); the operator "
                     "with `" + " ".join(scale.OPERATOR_ARGS) + "` on each")

        main_plane = planes["endpoints"]
        results = []
        for n in sizes:
            say(f"scale: N = {n}")
            results.append(scale.measure(main_plane.cp, main_plane.kube, main_plane.kubeconfig, work, ca,
                                         main_plane.watcher, n, window, profile=True, say=say))
        hangs = []
        for n in hang_sizes:
            say(f"mass hang: {n} APIServices behind one server that hangs")
            hangs.append(scale.mass_hang(main_plane.kube, main_plane.kubeconfig, work, ca, main_plane.watcher, n,
                                         hang_bound, say))

        big_rows = None
        unrelated = int(os.environ.get("BENCH_BIG", "10000"))
        if unrelated > 0:
            say(f"big cluster: 20 APIServices beside {unrelated} unrelated Services and EndpointSlices")
            big = bigcluster.measure(main_plane.cp, main_plane.kube, main_plane.kubeconfig, work, ca,
                                     main_plane.watcher, unrelated, float(os.environ.get("BENCH_BIG_CHURN", "100")),
                                     float(os.environ.get("BENCH_BIG_SECONDS", "60")), window, say)
            big_rows = bigcluster.table(big)

        verdicts = targets.evaluate(samples, results, hangs, intervals.get("endpoints"))
        stamp = datetime.date.today().isoformat()
        what = f"twins-n{max(sizes, default=0)}-r{reps}" if sizes or reps else f"big-cluster-u{unrelated}"
        if os.environ.get("BENCH_OPERATOR_PATH"):
            what += "-proposed-operator"
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        facts = {"date": stamp, "Kubernetes": KUBE_VERSION, **report.machine_facts()}
        report.write(out / f"{stamp}-{what}.md", command, facts, before, samples, intervals, results, hangs,
                     verdicts, notes, big_rows)
        report.plot(out / f"{stamp}-{what}.png", samples, results)
        print((out / f"{stamp}-{what}.md").read_text())
        say(f"written: bench/results/{stamp}-{what}.md and .png; logs and raw profiles in {work}")
        return 0
    finally:
        for close in reversed(closers):
            close()


if __name__ == "__main__":
    sys.exit(main())
