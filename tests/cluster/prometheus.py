"""A real Prometheus (Debian's `prometheus` package) for the monitoring tests and the demo.

What it loads always comes from the shipped files: the rules are manifests/monitoring/
prometheusrule.yaml's spec.groups, the queries are the dashboard's. The pure helpers turn those
into what Prometheus and the tests need; `Prometheus` runs the binary on an address we choose
(127.0.0.1 or a network namespace's own address, never 0.0.0.0) and stops it for good.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.cluster.controlplane import REPO, stop_group

MONITORING = REPO / "manifests" / "monitoring"
RULE_MANIFEST = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
INSTALL_HINT = "apt-get install -y prometheus (Debian's package ships prometheus and promtool)"


# --- rules --------------------------------------------------------------------------------------
def rule_groups(manifest: str) -> dict[str, Any]:
    """A Prometheus rule file holding the PrometheusRule's spec.groups, untouched."""
    doc = yaml.safe_load(manifest)
    if doc.get("kind") != "PrometheusRule":
        raise ValueError(f"not a PrometheusRule: kind={doc.get('kind')!r}")
    return {"groups": doc["spec"]["groups"]}


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """Prometheus' duration syntax (`1h30m`, `15s`)."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def demo_rules(rules: Mapping[str, Any], longest_for: str) -> dict[str, Any]:
    """DEMO ONLY: a copy whose `for:` durations are capped at `longest_for`, so a demo shows its
    alerts within a minute or two instead of 15. Each shortened rule says so in an annotation (on
    the alerts page too). Expressions and windows are left as shipped."""
    cap = duration_seconds(longest_for)
    out = copy.deepcopy(dict(rules))
    for group in out["groups"]:
        for rule in group["rules"]:
            held = rule.get("for")
            if held is not None and duration_seconds(str(held)) > cap:
                rule["for"] = longest_for
                rule.setdefault("annotations", {})["demo"] = (
                    f"for: shortened from {held} to {longest_for} by make demo-monitoring (shipped: {held})")
    return out


def alert_names(rules: Mapping[str, Any]) -> list[str]:
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


# --- the dashboard ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    return [PanelQuery(p.get("title", "?"), t.get("refId", "?"), t["expr"])
            for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's variable syntaxes ($x, ${x}, ${x:fmt}, [[x]]) replaced as Grafana would with the
    values given; an unknown variable is an error, not a silent empty string."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(one, expr)


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port
    scheme: str = "http"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    scrape_interval: str | None = None  # the global one when None


def config(targets: list[Target], *, scrape_interval: str, evaluation_interval: str) -> dict[str, Any]:
    """prometheus.yml without rule_files (Prometheus.start adds its own): one static job per
    target; kube-apiserver's needs a client certificate (tls_config)."""
    jobs = []
    for t in targets:
        job: dict[str, Any] = {"job_name": t.job, "scheme": t.scheme, "static_configs": [{"targets": [t.address]}]}
        if t.scrape_interval:
            job["scrape_interval"] = t.scrape_interval
        if t.scheme == "https":
            tls = {"ca_file": t.ca_file, "cert_file": t.cert_file, "key_file": t.key_file}
            job["tls_config"] = {k: str(v) for k, v in tls.items() if v is not None}
        jobs.append(job)
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "scrape_configs": jobs,
    }


def control_plane_targets(operator: str, apiserver: str, pki: Path) -> list[Target]:
    """The operator's /metrics and kube-apiserver's, the latter as the admin (its client
    certificate) and less often: it is large."""
    return [Target("apiservice-operator", operator),
            Target("kube-apiserver", apiserver, "https", pki / "ca.crt", pki / "admin.crt", pki / "admin.key",
                   scrape_interval="5s")]


# --- the binary ---------------------------------------------------------------------------------
def find(tool: str) -> str | None:
    return shutil.which(tool)


@dataclass
class Prometheus:
    """One prometheus process. `start()` returns once /-/ready answers; `stop()` ends it (SIGTERM,
    then SIGKILL) and is safe to call twice."""

    workdir: Path
    listen: str  # host:port
    cfg: dict[str, Any]
    rules: dict[str, Any] | None = None
    binary: str = "prometheus"
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def page(self, name: str) -> str:
        """The URL of a web UI page (alerts, graph, targets): Debian's build serves only the classic
        UI, under /classic/; upstream's serves /alerts and so on."""
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{self.url}/{name}", timeout=5).status_code == 200:
                return f"{self.url}/{name}"
        return f"{self.url}/classic/{name}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, timeout: float = 60) -> Prometheus:
        host = self.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "", "[::]"):
            raise ValueError("Prometheus listens on one address of ours, never on every interface")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(self.cfg)
        if self.rules is not None:
            rule_file = self.workdir / "rules.yaml"
            rule_file.write_text(yaml.safe_dump(self.rules, sort_keys=False))
            cfg["rule_files"] = [str(rule_file)]
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [self.binary, f"--config.file={config_file}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address={self.listen}", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout}s:\n{self.logs()}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        stop_group(self.popen)
        self.popen = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no log)"

    def api(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {json.dumps(body)[:500]}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar comes back as one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def rule_health(self) -> dict[str, str]:
        """Each rule's name -> 'ok' or its last evaluation error."""
        out = {}
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                out[rule["name"]] = rule["health"] if rule["health"] == "ok" else rule.get("lastError", "?")
        return out
