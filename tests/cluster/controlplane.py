"""etcd and kube-apiserver as local processes: the real Kubernetes API our tests run against.

The flags and addresses are DESIGN.md 6a's verified recipe. Runs inside a network namespace made by
hack/netns-run (tests) or hack/cluster.sh (make cluster-up), where 10.250.0.x are local addresses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import pki

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.37.2")
ADVERTISE_ADDRESS = "10.250.0.1"
SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"


def ensure_binaries() -> Path:
    """The cached kube-apiserver/kubectl/etcd, built from Go modules on first use (~5-7 min)."""
    explicit = os.environ.get("KUBE_BIN_DIR")
    if explicit:
        return Path(explicit)
    script = REPO / "hack" / "build-kube.sh"
    result = subprocess.run(
        [str(script)], stdout=subprocess.PIPE, stderr=sys.stderr, text=True, check=True,
        env={**os.environ, "KUBE_VERSION": KUBE_VERSION},
    )
    return Path(result.stdout.strip().splitlines()[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_group(popen: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Ends a process started with start_new_session and whatever it forked: `sig`, then SIGKILL."""
    if popen is None or popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(5)


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        # its own process group, so teardown also reaches anything it forks
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        stop_group(self.popen, sig, timeout)
        self.popen = None

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    """One etcd + one kube-apiserver. `start()` blocks until /readyz answers ok."""

    workdir: Path
    bin_dir: Path
    port: int = 0
    etcd_port: int = 0
    bind_address: str = "0.0.0.0"
    extra_sans: tuple[str, ...] = ()
    ready_timeout: float = 120.0
    kubeconfig: Path = field(init=False)
    ca_path: Path = field(init=False)
    _etcd: _Proc = field(init=False)
    _apiserver: _Proc = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.etcd_port = self.etcd_port or free_port()
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.ca_path = self.workdir / "pki" / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @classmethod
    def attach(cls, state: Path) -> ControlPlane:
        """The control plane `make cluster-up` started (python -m tests.cluster serve), from inside
        its namespace; stopping it stays with cluster-down."""
        bin_dir = Path((state / "bin-dir").read_text().strip())
        server = yaml.safe_load((state / "admin.kubeconfig").read_text())["clusters"][0]["cluster"]["server"]
        cp = cls(workdir=state, bin_dir=bin_dir, port=int(server.rsplit(":", 1)[1]))
        return cp

    # --- certificates ---------------------------------------------------------------------------
    def _make_pki(self) -> dict[str, Path]:
        d = self.workdir / "pki"
        d.mkdir(exist_ok=True)
        ca = pki.make_ca("apiservice-operator-test-ca")
        ca.write(d, "ca")
        serving = pki.issue(
            ca, "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", ADVERTISE_ADDRESS, FIRST_SERVICE_IP, *self.extra_sans),
            server=True,
        )
        admin = pki.issue(ca, "admin", organization="system:masters", client=True)
        front_ca = pki.make_ca("apiservice-operator-front-proxy-ca")
        front_client = pki.issue(front_ca, "front-proxy-client", client=True)
        paths: dict[str, Path] = {"ca": d / "ca.crt", "front_ca": d / "front-proxy-ca.crt"}
        front_ca.write(d, "front-proxy-ca")
        paths["serving_crt"], paths["serving_key"] = serving.write(d, "apiserver")
        paths["admin_crt"], paths["admin_key"] = admin.write(d, "admin")
        paths["front_crt"], paths["front_key"] = front_client.write(d, "front-proxy-client")
        paths["sa_key"], paths["sa_pub"] = pki.make_service_account_keys(d)
        return paths

    def write_kubeconfig(self, path: Path, server: str) -> Path:
        d = self.workdir / "pki"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(d / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(d / "admin.crt"), "client-key": str(d / "admin.key")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # --- lifecycle ------------------------------------------------------------------------------
    def etcd_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "etcd"),
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def apiserver_argv(self, paths: dict[str, Path], *, bind_address: str, advertise_address: str, port: int,
                       cert_dir: Path, binary: Path | None = None, uid: int | None = None) -> list[str]:
        """paths: what _make_pki returns (or copies of those files). uid: run as that unprivileged
        uid and gid, without supplementary groups (tests/cluster/multiplane.py)."""
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid is not None else []
        return [
            *drop,
            str(binary or self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={port}",
            f"--bind-address={bind_address}",
            f"--advertise-address={advertise_address}",
            f"--tls-cert-file={paths['serving_crt']}",
            f"--tls-private-key-file={paths['serving_key']}",
            f"--client-ca-file={paths['ca']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={paths['sa_pub']}",
            f"--service-account-signing-key-file={paths['sa_key']}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-aggregator-routing=true",
            f"--requestheader-client-ca-file={paths['front_ca']}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={paths['front_crt']}",
            f"--proxy-client-key-file={paths['front_key']}",
            f"--cert-dir={cert_dir}",
            "--v=1",
        ]

    def start(self) -> ControlPlane:
        paths = self._make_pki()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self._etcd = _Proc("etcd", self.etcd_argv(), logs / "etcd.log")
        self._apiserver = _Proc("kube-apiserver", self.apiserver_argv(
            paths, bind_address=self.bind_address, advertise_address=ADVERTISE_ADDRESS, port=self.port,
            cert_dir=self.workdir / "apiserver-certs",
        ), logs / "kube-apiserver.log")
        self.write_kubeconfig(self.kubeconfig, self.server)
        try:
            self._etcd.start()
            self._apiserver.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        context = self.ssl_context()
        last = "no answer yet"
        while time.monotonic() < deadline:
            for proc in (self._etcd, self._apiserver):
                if not proc.alive():
                    raise ControlPlaneError(f"{proc.name} exited early\n{self.logs()}")
            try:
                import http.client

                conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=5)
                conn.request("GET", "/readyz")
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                conn.close()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {body[-400:]}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.25)
        waited = timeout or self.ready_timeout
        raise ControlPlaneError(f"kube-apiserver not ready after {waited}s: {last}\n{self.logs()}")

    def ssl_context(self) -> ssl.SSLContext:
        d = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(d / "ca.crt"))
        context.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
        return context

    def restart_apiserver(self) -> None:
        self._apiserver.stop()
        self._apiserver.start()
        self.wait_ready()

    def restart_etcd(self) -> None:
        self._etcd.stop()
        self._etcd.start()
        self.wait_ready()

    # --- faults: the halves of a restart, a frozen API, etcd compaction (tests/integration/test_faults.py)
    def stop_apiserver(self) -> None:
        self._apiserver.stop()

    def start_apiserver(self) -> None:
        """After stop_apiserver(); blocks until /readyz answers ok."""
        self._apiserver.start()
        self.wait_ready()

    def stop_etcd(self) -> None:
        self._etcd.stop()

    def start_etcd(self) -> None:
        """After stop_etcd(); blocks until kube-apiserver's /readyz answers ok again."""
        self._etcd.start()
        self.wait_ready()

    def signal_apiserver(self, sig: int) -> None:
        """E.g. SIGSTOP / SIGCONT: the API unreachable while its process and sockets stay."""
        if self._apiserver.popen is None or self._apiserver.popen.poll() is not None:
            raise ControlPlaneError("kube-apiserver is not running")
        os.killpg(self._apiserver.popen.pid, sig)

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def _etcd_gateway(self, path: str, body: dict[str, object]) -> dict[str, object]:
        import json
        import urllib.request

        request = urllib.request.Request(f"{self.etcd_url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def etcd_revision(self) -> int:
        """etcd's current revision, from its gRPC gateway (a range read of one key)."""
        reply = self._etcd_gateway("/v3/kv/range", {"key": "AA==", "limit": 1})  # key "\0"
        header = reply.get("header")
        assert isinstance(header, dict), reply
        return int(header["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compacts etcd's history up to `revision` (default: the current one), as kube-apiserver does
        every 5 minutes: every watch resuming from an older resourceVersion then gets 410 Gone."""
        revision = revision or self.etcd_revision()
        self._etcd_gateway("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def stop(self) -> None:
        for proc in (getattr(self, "_apiserver", None), getattr(self, "_etcd", None)):
            if proc is not None:
                proc.stop()

    def logs(self, lines: int = 60) -> str:
        parts = []
        for proc in (getattr(self, "_etcd", None), getattr(self, "_apiserver", None)):
            if proc is not None:
                parts.append(f"----- {proc.name} (last {lines} lines) -----\n{proc.tail(lines)}")
        return "\n".join(parts)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def cleanup_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
