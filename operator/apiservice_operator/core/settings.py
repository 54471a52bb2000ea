"""One frozen Settings, filled from flags with environment-variable fallbacks (for the Deployment)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from apiservice_operator.core.model import DEFAULT_CONDITION_PREFIX, DEFAULT_PROBE_TIMEOUT, ConditionTypes
from apiservice_operator.core.path import PathProbeMode
from apiservice_operator.core.selector import LabelSelector

ENV_PREFIX = "APISERVICE_OPERATOR_"
PATH_PROBE_MODES = tuple(str(m) for m in PathProbeMode)


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None = None
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    # 20 s at most between periodic probes (kube-aggregator's resync is 30 s) and 4 s at least: each probe
    # costs ~2-4 ms of Python CPU, so 1 s and 10 s had 10 APIServices at 6.6 % of a core and 1,000 at 47 %
    # (make bench). Changes, failures and shared servers are probed at once whatever the interval.
    probe_interval: float = 20.0
    min_probe_interval: float = 4.0
    max_probe_rate: float = 20.0
    concurrency: int = 256
    # a start beside 1,000 APIServices writes 1,000 first verdicts; kube-apiserver took ~50 a second (make bench)
    max_write_rate: float = 100.0
    # writes at rest store up to this many: a start or a shared server's hang writes its first 500
    # verdicts as fast as kube-apiserver takes them (16 at a time), not 100 a second (1,000 took 10 s of
    # writes alone, and missed 15 s: make bench); its 429s still slow every write down
    max_write_burst: int = 500
    condition_prefix: str = DEFAULT_CONDITION_PREFIX
    selector: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    debounce: float = 0.01
    metrics_port: int = 8080
    explain_port: int = 8081
    leader_election: bool = False
    lease_name: str = "apiservice-operator"
    lease_namespace: str = ""
    lease_duration: float = 15.0
    events_namespace: str = "default"
    identity: str = ""
    resync_interval: float = 30.0
    path_probe: str = "auto"
    path_probe_instances: str = ""
    probe_service_account: str = "apiservice-operator-probe"
    cert_expiry_warning: float = 14.0
    types: ConditionTypes = field(init=False, repr=False, compare=False)
    label_selector: LabelSelector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.probe_timeout <= 0:
            raise ValueError("--probe-timeout must be positive")
        if self.probe_interval <= 0:
            raise ValueError("--probe-interval must be positive")
        if self.min_probe_interval <= 0:
            raise ValueError("--min-probe-interval must be positive")
        if self.max_probe_rate <= 0:
            raise ValueError("--max-probe-rate must be positive")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.max_write_rate < 1:
            raise ValueError("--max-write-rate must be at least 1 (status writes per second)")
        if self.max_write_burst < 1:
            raise ValueError("--max-write-burst must be at least 1 (status writes)")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("--metrics-port must be 0 (off) or a port number")
        if not 0 <= self.explain_port <= 65535:
            raise ValueError("--explain-port must be 0 (off) or a port number")
        if self.explain_port and self.explain_port == self.metrics_port:
            raise ValueError("--explain-port and --metrics-port must differ")
        if self.resync_interval < 0:
            raise ValueError("--resync-interval must be 0 (off) or positive")
        if self.lease_duration < 2:
            raise ValueError("--lease-duration must be at least 2 seconds")
        if self.path_probe not in PATH_PROBE_MODES:
            raise ValueError(f"--path-probe must be one of {', '.join(PATH_PROBE_MODES)}")
        if self.probe_service_account.count("/") > 1 or not self.probe_service_account.strip("/"):
            raise ValueError("--probe-service-account must be NAME or NAMESPACE/NAME (or `none`)")
        if self.cert_expiry_warning < 0:
            raise ValueError("--cert-expiry-warning must be 0 (off) or a number of days")
        if self.log_format not in ("text", "json"):
            raise ValueError("--log-format must be text or json")
        object.__setattr__(self, "types", ConditionTypes(self.condition_prefix))
        object.__setattr__(self, "label_selector", LabelSelector.parse(self.selector))

    @property
    def picked_instances(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.path_probe_instances.split(",") if p.strip())

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("types", None)
        d.pop("label_selector", None)
        return d


def boolean(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use true or false)")


# (flag, env suffix, type, help). The env twin of --probe-timeout is APISERVICE_OPERATOR_PROBE_TIMEOUT.
_FLAGS: Sequence[tuple[str, Any, str]] = (
    ("probe-timeout", float, "total budget of one discovery probe, seconds (kube-apiserver's is 5)"),
    ("probe-interval", float, "re-probe every APIService at least this often, seconds, jittered by up to 10%%"),
    ("min-probe-interval", float, "with few APIServices re-probe as often as this, seconds, within --max-probe-rate: "
                                  "a hang is then caught in about this plus the budget"),
    ("max-probe-rate", float, "periodic probes per second at most: the interval is the number of probed "
                              "APIServices / this rate, between --min-probe-interval and --probe-interval"),
    ("concurrency", int, "at most this many APIServices probed at once"),
    ("max-write-rate", float, "status writes per second at most; when kube-apiserver throttles them (429, "
                              "Retry-After) or fails them, writes back off and go one at a time until one lands"),
    ("max-write-burst", int, "after a quiet spell this many status writes may go at once (as fast as "
                             "kube-apiserver takes them), before --max-write-rate paces the rest"),
    ("condition-prefix", str, "our condition types are <prefix>/Available and <prefix>/Degraded"),
    ("selector", str, "label selector: handle only APIServices matching it (e.g. 'team=platform,tier!=dev')"),
    ("log-format", str, "text or json"),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("debounce", float, "coalesce bursts of changes to one APIService for this long, seconds"),
    ("metrics-port", int, "serve /metrics, /healthz and /readyz on this port; 0 turns it off"),
    ("explain-port", int, "serve /explain/<name> on this port of the loopback only (127.0.0.1), reached by "
                          "`kubectl apiservices explain` through a port-forward that kube-apiserver authorizes; "
                          "0 turns it off"),
    ("leader-election", boolean, "hold a coordination.k8s.io Lease: only the holder probes and writes"),
    ("lease-name", str, "the Lease's name"),
    ("lease-namespace", str, "the Lease's namespace (default: the pod's, from POD_NAMESPACE or the "
                             "ServiceAccount mount)"),
    ("lease-duration", float, "seconds a leader's Lease lasts without renewal (failover takes about this)"),
    ("events-namespace", str, "namespace of the Events about (cluster-scoped) APIServices"),
    ("identity", str, "this replica's Lease holder identity (default: POD_NAME, else hostname-pid)"),
    ("path-probe", str, "judge each APIService by what a request through kube-apiserver gets: `instances` asks "
                        "each kube-apiserver instance by its address in default/kubernetes's EndpointSlices, "
                        "`kubeconfig` the operator's own API server URL, `auto` instances in the cluster, and "
                        "outside it the instances where they all answer /livez from here, else the kubeconfig's "
                        "server, `off` the endpoints alone decide"),
    ("path-probe-instances", str, "with --path-probe=instances (or auto where it asks the instances), only these "
                                  "kube-apiserver instances, as comma-separated ADDRESS:PORT (default: every one)"),
    ("probe-service-account", str, "the probe identity, NAME (in the operator's namespace) or NAMESPACE/NAME: a "
                                   "ServiceAccount with no RBAC binding whose short-lived tokens are the only "
                                   "credential sent to aggregated servers; `none` sends none"),
    ("cert-expiry-warning", float, "Degraded (CertificateExpiring) when a served certificate or a caBundle CA "
                                   "ends within this many days; 0 turns it off"),
    ("resync-interval", float, "this often, seconds, find APIServices deleted while kopf's watch was down (its "
                               "re-list after 410 Gone keeps them) and forget them; 0 turns it off"),
)


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    defaults = Settings()
    parser.add_argument(
        "--kubeconfig", default=env.get(env_name("kubeconfig")) or env.get("KUBECONFIG"),
        help="kubeconfig file (env: APISERVICE_OPERATOR_KUBECONFIG or KUBECONFIG); "
             "without it, the in-cluster ServiceAccount is used")
    for flag, ftype, help_text in _FLAGS:
        attr = flag.replace("-", "_")
        default = getattr(defaults, attr)
        raw = env.get(env_name(flag))
        value = default
        if raw not in (None, ""):
            try:
                value = ftype(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env_name(flag)}={raw!r}: {exc}")
        parser.add_argument(
            f"--{flag}", type=ftype, default=value,
            choices=("text", "json") if flag == "log-format" else PATH_PROBE_MODES if flag == "path-probe" else None,
            metavar="BOOL" if ftype is boolean else None,
            help=f"{help_text} (env: {env_name(flag)}; default: {default!r})")


def from_args(args: argparse.Namespace) -> Settings:
    # every flag of _FLAGS is a Settings field of the same name: a new flag needs no line here
    values = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag, _, _ in _FLAGS}
    values["log_level"] = values["log_level"].upper()
    return Settings(kubeconfig=args.kubeconfig, **values)
