"""One frozen Settings, filled from flags with environment-variable fallbacks (for the Deployment)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from apiservice_operator.model import DEFAULT_CONDITION_PREFIX, DEFAULT_PROBE_TIMEOUT, ConditionTypes
from apiservice_operator.selector import LabelSelector

ENV_PREFIX = "APISERVICE_OPERATOR_"


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None = None
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    probe_interval: float = 10.0
    concurrency: int = 256
    condition_prefix: str = DEFAULT_CONDITION_PREFIX
    selector: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    debounce: float = 0.05
    types: ConditionTypes = field(init=False, repr=False, compare=False)
    label_selector: LabelSelector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.probe_timeout <= 0:
            raise ValueError("--probe-timeout must be positive")
        if self.probe_interval <= 0:
            raise ValueError("--probe-interval must be positive")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.log_format not in ("text", "json"):
            raise ValueError("--log-format must be text or json")
        object.__setattr__(self, "types", ConditionTypes(self.condition_prefix))
        object.__setattr__(self, "label_selector", LabelSelector.parse(self.selector))

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("types", None)
        d.pop("label_selector", None)
        return d


# (flag, env suffix, type, help). The env twin of --probe-timeout is APISERVICE_OPERATOR_PROBE_TIMEOUT.
_FLAGS: Sequence[tuple[str, type, str]] = (
    ("probe-timeout", float, "total budget of one discovery probe, seconds (kube-apiserver's is 5)"),
    ("probe-interval", float, "re-probe every APIService this often, seconds, jittered by up to 10%%"),
    ("concurrency", int, "at most this many APIServices probed at once"),
    ("condition-prefix", str, "our condition types are <prefix>/Available and <prefix>/Degraded"),
    ("selector", str, "label selector: handle only APIServices matching it (e.g. 'team=platform,tier!=dev')"),
    ("log-format", str, "text or json"),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("debounce", float, "coalesce bursts of changes to one APIService for this long, seconds"),
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
        parser.add_argument(
            f"--{flag}", type=ftype, default=ftype(raw) if raw not in (None, "") else default,
            choices=("text", "json") if flag == "log-format" else None,
            help=f"{help_text} (env: {env_name(flag)}; default: {default!r})")


def from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        kubeconfig=args.kubeconfig, probe_timeout=args.probe_timeout, probe_interval=args.probe_interval,
        concurrency=args.concurrency, condition_prefix=args.condition_prefix, selector=args.selector,
        log_format=args.log_format, log_level=args.log_level.upper(), debounce=args.debounce,
    )
