"""make bench: apiservice-operator and kube-apiserver's own availability controller, side by side
on one local control plane. Writes bench/results/<date>-<what>.md and .png.

    BENCH_REPS=10 BENCH_SIZES=10,100,1000 BENCH_HANG=50 BENCH_WINDOW=30 make bench
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

from tests.cluster import pki
from tests.cluster.controlplane import KUBE_VERSION, REPO, ControlPlane, ensure_binaries
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube
from tests.cluster.operator import OperatorProcess, install_manifests, service_account_kubeconfig

from bench import latency, report, scale
from bench.watcher import Watcher


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def main() -> int:
    reps = int(os.environ.get("BENCH_REPS", "10"))
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10,100,1000").split(",") if s]
    hang_sizes = [int(s) for s in os.environ.get("BENCH_HANG", "50").split(",") if s]
    window = float(os.environ.get("BENCH_WINDOW", "30"))
    command = " ".join(f"{k}={os.environ[k]}" for k in ("BENCH_REPS", "BENCH_SIZES", "BENCH_HANG", "BENCH_WINDOW")
                       if k in os.environ) + " make bench"
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    cp = ControlPlane(workdir=work / "cp", bin_dir=ensure_binaries()).start()
    kube = Kube(cp.server, cp.ssl_context())
    watcher = Watcher(cp.server, cp.ssl_context()).start()
    ca = pki.make_ca("bench-ca")
    try:
        install_manifests(cp)
        kubeconfig = service_account_kubeconfig(cp, work / "sa.kubeconfig")

        say(f"detection latency: 4 faults side by side, {reps} repetitions each")
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lat"}})
        apis: list[AggregatedAPI] = []

        def make_api(service: str) -> AggregatedAPI:
            api = AggregatedAPI(kube, "lat", service, f"{service}.lat.bench.example.com", "v1", work, ca)
            api.start_servers(1)
            api.register_service()
            api.write_slice()
            api.register_apiservice()
            apis.append(api)
            return api

        op = OperatorProcess(kubeconfig, work / "operator-latency.log", ["--metrics-port", "0"]).start()
        try:
            samples = latency.run(make_api, watcher, reps)
        finally:
            op.stop()
            for api in apis:
                api.remove()

        hangs = []
        for n in hang_sizes:
            say(f"mass hang: {n} APIServices behind one server that hangs")
            hangs.append(scale.mass_hang(kube, kubeconfig, work, ca, watcher, n))

        results = []
        for n in sizes:
            say(f"scale: N = {n}")
            results.append(scale.measure(cp, kube, kubeconfig, work, ca, n, window, profile=n == max(sizes)))

        targets = evaluate(samples, results, hangs)
        stamp = datetime.date.today().isoformat()
        what = f"side-by-side-n{max(sizes) if sizes else 0}-r{reps}"
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        facts = {"date": stamp, "Kubernetes": KUBE_VERSION, **report.machine_facts()}
        report.write(out / f"{stamp}-{what}.md", command, facts, samples, results, hangs, targets)
        report.plot(out / f"{stamp}-{what}.png", samples, results)
        print((out / f"{stamp}-{what}.md").read_text())
        return 0
    finally:
        watcher.stop()
        kube.close()
        cp.stop()


def evaluate(samples: latency.Samples, results: list[scale.ScaleResult], hangs: list[scale.MassHang]) -> list[str]:
    from bench.watcher import OURS, THEIRS

    def med(fault: str, which: str) -> float | None:
        return latency.summarise(samples.data.get(fault, {}).get("fault", {}).get(which, []))[0]

    out = []
    ours_h, theirs_h = med("server hangs (SIGSTOP)", OURS), med("server hangs (SIGSTOP)", THEIRS)
    if ours_h is not None and theirs_h:
        met = "MET" if ours_h <= theirs_h / 3 else "MISSED"
        out.append(f"hang detected in at most 1/3 of kube-apiserver's time: {met}"
                   f" ({ours_h:.1f} s vs {theirs_h:.1f} s, ratio {ours_h / theirs_h:.2f})")
    ours_e, theirs_e = med("EndpointSlice emptied", OURS), med("EndpointSlice emptied", THEIRS)
    if ours_e is not None and theirs_e is not None:
        ok = ours_e <= 1 and ours_e <= theirs_e
        out.append(f"endpoint removal within 1 s and no slower than kube-apiserver: {'MET' if ok else 'MISSED'} "
                   f"({ours_e:.2f} s vs {theirs_e:.2f} s)")
    for r in results:
        if r.n == 1000:
            ok = r.sweep_s <= 10 and r.cpu_percent < 25 and r.peak_rss_mib < 150
            out.append(f"N = 1000 swept within 10 s, < 25 % of a core, < 150 MiB: {'MET' if ok else 'MISSED'} "
                       f"(sweep {r.sweep_s:.1f} s, CPU {r.cpu_percent:.0f} %, RSS {r.peak_rss_mib:.0f} MiB)")
    if results:
        ok = all(abs(r.writes_for_flip - 1) < 1e-9 and r.writes_steady == 0 for r in results)
        out.append(f"status writes == transitions, none in steady state: {'MET' if ok else 'MISSED'}")
        rates = ", ".join(f"N={r.n}: {r.operator_rps:.2f}/s" for r in results)
        out.append(f"steady-state API requests/s independent of N (non-watch): {rates}")
    for h in hangs:
        if h.ours[2] is not None:
            theirs_all = f"all in {h.theirs[2]:.1f} s" if h.theirs[2] is not None else "not all within the bound"
            out.append(f"mass hang N={h.n}: ours all flipped in {h.ours[2]:.1f} s; kube-apiserver {theirs_all}")
    return out


if __name__ == "__main__":
    sys.exit(main())
