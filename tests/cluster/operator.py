"""Runs the operator as a subprocess, as its own ServiceAccount (RBAC from manifests/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.cluster.controlplane import REPO, ControlPlane

SA_NAMESPACE = "apiservice-operator"
SA_NAME = "apiservice-operator"


def install_manifests(cp: ControlPlane, path: Path = REPO / "manifests") -> None:
    """`kubectl apply -k`, server-side dry-run first, as a user would. A server-side dry-run cannot
    see a Namespace it would create, so that one object goes first."""
    cp.kubectl("apply", "-f", str(path / "namespace.yaml"))
    cp.kubectl("apply", "-k", str(path), "--dry-run=server")
    cp.kubectl("apply", "-k", str(path))


def service_account_kubeconfig(cp: ControlPlane, target: Path, *, namespace: str = SA_NAMESPACE,
                               name: str = SA_NAME, server: str | None = None) -> Path:
    """A kubeconfig holding a TokenRequest token of the ServiceAccount, nothing of the admin's."""
    token = cp.kubectl("create", "token", name, "-n", namespace, "--duration=6h").stdout.strip()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server or cp.server,
                                                   "certificate-authority": str(cp.ca_path)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": name}}],
        "current-context": "sa",
    }
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    args: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        if "--explain-port" not in self.args:
            # off unless a test asks for it: many operators share one network namespace, and 8081 once
            self.args = [*self.args, "--explain-port", "0"]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "apiservice_operator", "run", "--kubeconfig", str(self.kubeconfig), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        code = self.popen.returncode
        self.popen = None
        return code

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if text in logs:
                return logs
            if not self.alive():
                raise AssertionError(f"operator exited while waiting for {text!r}:\n{logs[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"operator log never showed {text!r}:\n{self.logs()[-4000:]}")
