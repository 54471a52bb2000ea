"""`kubectl apiservices` through real kubectl's plugin mechanism, against the real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.integration.test_scenarios import OURS, OURS_TIMEOUT, register_healthy

pytestmark = [pytest.mark.cluster]


def plugin_env(cp: ControlPlane) -> dict[str, str]:
    # kubectl finds kubectl-apiservices on PATH, where `pip install` put the console script
    bin_dirs = [str(Path(sys.executable).parent), str(cp.bin_dir)]
    return {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PATH": os.pathsep.join([*bin_dirs, os.environ["PATH"]])}


def test_kubectl_apiservices_shows_both_verdicts(
    aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    healthy = aggregated_api(servers=2)
    register_healthy(healthy)
    broken = aggregated_api(servers=1, service="broken")
    register_healthy(broken)
    broken.stop()
    wait_conditions(healthy, {OURS: ("True", "Passed"), "Available": ("True", "Passed")}, 120)
    wait_conditions(broken, {OURS: ("False", "FailedDiscoveryCheck"), "Available": ("False", "FailedDiscoveryCheck")},
                    120)
    env = plugin_env(control_plane)
    rows = json.loads(subprocess.run([str(control_plane.kubectl_path), "apiservices", "-o", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    by_name = {r["NAME"]: r for r in rows}
    assert by_name[healthy.name] | {"AGE": "", "MESSAGE": ""} == {
        "NAME": healthy.name, "SERVICE": f"{healthy.namespace}/api", "KUBE-APISERVER": "True", "PROBED": "True",
        "REASON": "Passed", "PATH": "1/1", "LATENCY": "<1s", "ENDPOINTS": "2/2", "AGE": "", "MESSAGE": "",
        "DISCOVERY": "1/1", "CERT": "364d", "BLOCKING": "", "STALLING": ""}  # the test certificates last a year
    assert (by_name[broken.name]["PROBED"], by_name[broken.name]["KUBE-APISERVER"],
            by_name[broken.name]["ENDPOINTS"]) == ("False", "False", "0/1")
    assert by_name["v1.apps"]["SERVICE"] == "Local"

    table = subprocess.run([str(control_plane.kubectl_path), "apiservices"], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert table.splitlines()[0].split() == ["NAME", "SERVICE", "KUBE-APISERVER", "PROBED", "REASON", "PATH",
                                             "LATENCY", "ENDPOINTS", "AGE"]
    assert "\x1b[" not in table, "no colour when stdout is not a terminal"
    wide = subprocess.run([str(control_plane.kubectl_path), "apiservices", "-o", "wide"], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "connection refused" in wide


def test_kubectl_apiservices_watch_prints_changes(
    aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    api = aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)
    proc = subprocess.Popen([str(control_plane.kubectl_path), "apiservices", "--watch", "--interval", "0.5",
                             "-l", ""], env=plugin_env(control_plane), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("NAME")
        api.set_state(mode="status", status=500)
        deadline = time.monotonic() + OURS_TIMEOUT
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if api.name in line and "FailedDiscoveryCheck" in line:
                break
        else:
            raise AssertionError(f"--watch never printed the change:\n{seen}")
    finally:
        proc.terminate()
        proc.wait(10)
