"""`make demo`, the part that runs inside the control plane's network namespace: six sample
aggregated servers, their APIServices, the operator as its ServiceAccount, and the table."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.cluster import pki
from tests.cluster.controlplane import REPO, ControlPlane
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, condition, wait_for
from tests.cluster.operator import OperatorProcess, install_manifests, service_account_kubeconfig
from tests.cluster.prometheus import (
    RULE_MANIFEST,
    Prometheus,
    config,
    control_plane_targets,
    demo_rules,
    rule_groups,
)

OURS = "apiservice-operator.io/Available"
# our verdict beside kube-apiserver's with plain kubectl (README documents this recipe)
CUSTOM_COLUMNS = (
    'NAME:.metadata.name,'
    'KUBE-APISERVER:.status.conditions[?(@.type=="Available")].status,'
    'PROBED:.status.conditions[?(@.type=="apiservice-operator.io/Available")].status,'
    'REASON:.status.conditions[?(@.type=="apiservice-operator.io/Available")].reason,'
    'DEGRADED:.status.conditions[?(@.type=="apiservice-operator.io/Degraded")].status'
)


# DEMO ONLY: the shipped rules' `for:` (5-15 minutes) capped, so the alerts show within a couple of
# minutes; each alert so shortened carries a `demo` annotation saying so
DEMO_LONGEST_FOR = "20s"
# which alerts the broken samples must raise (make demo-monitoring waits for these)
EXPECTED_ALERTS = {("AggregatedAPIDownProbed", "v1.down.demo.example.com"),
                   ("AggregatedAPIDownProbed", "v1.slow.demo.example.com"),
                   ("AggregatedAPIDownProbed", "v1.wrong-ca.demo.example.com"),
                   ("AggregatedAPIDegraded", "v1.half-broken.demo.example.com"),
                   ("AggregatedAPIDiscoveryStale", "v1.stale-discovery.demo.example.com")}
OPERATOR_METRICS = "127.0.0.1:8080"  # the operator's default --metrics-port, inside the namespace


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def start_prometheus(cp: ControlPlane, listen: str, work: Path) -> Prometheus:
    targets = control_plane_targets(OPERATOR_METRICS, f"127.0.0.1:{cp.port}", cp.workdir / "pki")
    rules = demo_rules(rule_groups(RULE_MANIFEST.read_text()), DEMO_LONGEST_FOR)
    prom = Prometheus(work / "prometheus", listen, config(targets, scrape_interval="5s", evaluation_interval="5s"),
                      rules=rules)
    say(f"starting Prometheus on {listen}: it scrapes the operator and kube-apiserver and loads "
        f"{RULE_MANIFEST.relative_to(REPO)} with every for: capped at {DEMO_LONGEST_FOR} (DEMO ONLY; the file is "
        "unchanged, each shortened alert says so in its `demo` annotation)")
    return prom.start()


def outage_graph_url(prom: Prometheus, name: str) -> str:
    """Prometheus' graph page with our gauge and kube-apiserver's for one APIService, told apart by
    a `view` label (both are 1 while unavailable)."""
    import urllib.parse

    views = [f'label_replace(max by (name) ({metric}{{name="{name}"}}), "view", "{view}", "", "")'
             for metric, view in (("apiservice_operator_unavailable_apiservice", "operator"),
                                  ("aggregator_unavailable_apiservice", "kube-apiserver"))]
    return f"{prom.page('graph')}?" + urllib.parse.urlencode(
        {"g0.expr": " or ".join(views), "g0.tab": "0", "g0.range_input": "5m"})


def report_alerts(prom: Prometheus, seen: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Prints each alert the first time it fires and each that stops; returns those firing now."""
    now = {}
    for a in prom.alerts():
        if a["state"] == "firing":
            now[(a["labels"]["alertname"], a["labels"].get("name", ""))] = a
    for key in sorted(now.keys() - seen):
        a = now[key]
        print(f"ALERT firing  {key[0]:<26} {key[1] or '-':<34} severity={a['labels'].get('severity', '-'):<8} "
              f"{a['annotations'].get('summary', '')}", flush=True)
    for key in sorted(seen - now.keys()):
        print(f"ALERT resolved {key[0]:<25} {key[1] or '-'}", flush=True)
    return set(now)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--state", type=Path, required=True, help="make cluster-up's state directory")
    p.add_argument("--no-wait", action="store_true", help="print the table and exit (for CI)")
    p.add_argument("--prometheus", metavar="ADDRESS:PORT", default="",
                   help="also run Prometheus there with the shipped rules (make demo-monitoring)")
    args = p.parse_args()

    cp = ControlPlane.attach(args.state)
    kube = Kube(cp.server, cp.ssl_context())
    work = Path(tempfile.mkdtemp(prefix="apiservice-operator-demo-"))
    ca = pki.make_ca("demo-ca")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})

    def api(service: str, group: str, servers: int, serving_ca: pki.KeyPair | None = None) -> AggregatedAPI:
        a = AggregatedAPI(kube, "demo", service, group, "v1", work, ca)
        a.start_servers(servers, serving_ca=serving_ca)
        a.register_service()
        a.write_slice()
        return a

    say("starting seven sample aggregated API servers")
    apis = [
        api("healthy", "healthy.demo.example.com", 1),
        api("down", "down.demo.example.com", 1),
        api("slow", "slow.demo.example.com", 1),
        api("wrong-ca", "wrong-ca.demo.example.com", 1, serving_ca=pki.make_ca("not-the-demo-ca")),
        api("half-broken", "half-broken.demo.example.com", 2),
        # serves only system:masters (as an extension server whose auth-delegator binding is gone):
        # kube-apiserver's own check passes, every user gets 500
        api("refuses-users", "refuses-users.demo.example.com", 1),
        # serves its group/version, but its root /apis answers 503: kube-apiserver's own check passes,
        # its aggregated discovery (what kubectl and every controller read) keeps the group Stale
        api("stale-discovery", "stale-discovery.demo.example.com", 1),
    ]
    apis[1].stop()  # down: its endpoint refuses connections
    apis[2].set_state(mode="healthy", delay=7)  # slower than the 5 s budget
    apis[4].servers[0].set_state(mode="status", status=500)
    apis[5].set_state(mode="healthy", auth="masters-only")
    apis[6].set_state(mode="healthy", apis="status", apis_status=503)
    for a in apis:
        a.register_apiservice()

    say("installing the operator's manifests (kubectl apply -k manifests/) and running it as its ServiceAccount")
    install_manifests(cp)
    operator = OperatorProcess(service_account_kubeconfig(cp, work / "sa.kubeconfig"), work / "operator.log")
    operator.start()
    prom: Prometheus | None = None
    try:
        if args.prometheus:
            prom = start_prometheus(cp, args.prometheus, work)
        say("waiting for the verdicts (kube-apiserver's own can take ~30 s for a hung server)")
        for a in apis:
            def ours(a: AggregatedAPI = a) -> dict[str, object] | None:
                return condition(a.apiservice(), OURS)

            wait_for(ours, 60, f"our verdict on {a.name}")
        # the clients' view waits for kube-apiserver's aggregated discovery to read the new group once
        wait_for(lambda: (condition(apis[6].apiservice(), OURS) or {}).get("reason") == "DiscoveryStale", 90,
                 f"DiscoveryStale on {apis[6].name}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(condition(a.apiservice(), "Available") for a in apis):
            time.sleep(0.5)
        table = subprocess.run(
            [sys.executable, "-m", "apiservice_operator.plugin", "--kubeconfig", str(cp.kubeconfig),
             "-l", "", "-o", "wide"],
            capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
        )
        rows = [line for line in table.stdout.splitlines() if "demo.example.com" in line or line.startswith("NAME")]
        print("\n".join(rows), flush=True)
        if table.returncode != 0:
            print(table.stderr, file=sys.stderr)
            return 1
        for title, extra in (("kubectl get apiservices", []), ("kubectl get apiservices -o custom-columns=...",
                                                                  ["-o", f"custom-columns={CUSTOM_COLUMNS}"])):
            out = cp.kubectl("get", "apiservices", *extra).stdout.splitlines()
            print(f"\n$ {title}\n" + "\n".join(
                line for line in out if "demo.example.com" in line or line.startswith("NAME")), flush=True)
        alerts: set[tuple[str, str]] = set()
        if prom is not None:
            say(f"Prometheus: {prom.url} (alerts: {prom.page('alerts')}, targets: {prom.page('targets')})")
            say(f"one outage, ours beside kube-apiserver's: {outage_graph_url(prom, apis[1].name)}")
            say("waiting for the broken samples' alerts (1-2 minutes: AggregatedAPIDegraded looks at whole minutes)")
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline and EXPECTED_ALERTS - alerts:
                alerts = report_alerts(prom, alerts)
                stop.wait(2)
            if EXPECTED_ALERTS - alerts and not stop.is_set():
                say(f"expected alerts that did not fire: {sorted(EXPECTED_ALERTS - alerts)}\n{prom.logs()}")
                return 1
        if args.no_wait:
            return 0
        say(f"the cluster keeps running: kubectl --kubeconfig {args.state / 'kubeconfig'} apiservices --watch "
            "(or kubectl get apiservices). Ctrl-C stops everything.")
        while not stop.wait(2):
            if not operator.alive():
                say(f"the operator exited:\n{operator.logs()[-3000:]}")
                return 1
            if prom is not None:
                alerts = report_alerts(prom, alerts)
        return 0
    finally:
        if prom is not None:
            prom.stop()
            shutil.rmtree(prom.workdir, ignore_errors=True)  # its TSDB; the demo's other files are small
        operator.stop()
        for a in apis:
            a.stop()
        kube.close()


if __name__ == "__main__":
    sys.exit(main())
