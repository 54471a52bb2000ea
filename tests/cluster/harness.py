"""Registers real aggregated test servers with kube-apiserver the way a user would, minus the
controller-manager: a selector-less Service plus a hand-made EndpointSlice, then the APIService."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import builders
from tests.cluster import pki
from tests.cluster.controlplane import REPO
from tests.cluster.kube import Kube

SERVER_PORT = 8443

# 10.250.0.1 is kube-apiserver's advertise address; hack/netns-run puts .1-.200 on lo.
_addresses = (f"10.250.0.{i}" for i in itertools.cycle(range(10, 200)))
_address_lock = threading.Lock()


def next_address() -> str:
    with _address_lock:
        return next(_addresses)


# every test server started in this session, so that a last test can read what each one received
ALL_SERVERS: list[ServerProcess] = []


@dataclass
class ServerProcess:
    address: str
    port: int
    workdir: Path
    argv: list[str]
    popen: subprocess.Popen[str] | None = None

    @property
    def state_file(self) -> Path:
        return self.workdir / f"state-{self.address}.json"

    @property
    def record_file(self) -> Path:
        return self.workdir / f"requests-{self.address}.jsonl"

    def start(self) -> None:
        log = (self.workdir / f"server-{self.address}.log").open("a")
        self.popen = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.popen.stdout is not None
        if self not in ALL_SERVERS:
            ALL_SERVERS.append(self)
        line = self.popen.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"aggregated test server on {self.address} did not start: {line!r}")

    def set_state(self, **state: Any) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGCONT)  # a SIGSTOPped process must wake up to die of SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)
        self.popen = None

    def requests(self) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines() if line.strip()]


@dataclass
class AggregatedAPI:
    """One APIService, its Service, its EndpointSlice and the servers behind it."""

    kube: Kube
    namespace: str
    service: str
    group: str
    version: str
    workdir: Path
    ca: pki.KeyPair
    servers: list[ServerProcess] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.version}.{self.group}"

    def start_servers(self, count: int, serving_ca: pki.KeyPair | None = None,
                      valid_for: datetime.timedelta | None = None) -> None:
        """serving_ca: the CA that signs the servers' certificate (default: the one in caBundle);
        valid_for: how long that certificate lasts from now (default: pki's)."""
        signer = serving_ca or self.ca
        dns = f"{self.service}.{self.namespace}.svc"
        pair = pki.issue(signer, dns, dns_names=(dns,), server=True, valid_for=valid_for)
        cert, key = pair.write(self.workdir, f"{self.service}-serving")
        for _ in range(count):
            address = next_address()
            proc = ServerProcess(address, SERVER_PORT, self.workdir, [])
            proc.argv = [
                sys.executable, "-m", "tests.cluster.aggserver", "--address", address,
                "--port", str(SERVER_PORT), "--cert", str(cert), "--key", str(key),
                "--group", self.group, "--version", self.version,
                "--state", str(proc.state_file), "--record", str(proc.record_file),
            ]
            proc.start()
            self.servers.append(proc)

    def register_service(self, ports: list[dict[str, Any]] | None = None) -> None:
        self.kube.create(Kube.service_path(self.namespace),
                         builders.make_service(self.namespace, self.service, ports=ports))

    def write_slice(self, addresses: list[str] | None = None, *, ready: bool = True,
                    port: int = SERVER_PORT, port_name: str | None = "https") -> None:
        if addresses is None:
            addresses = [s.address for s in self.servers]
        body = builders.make_slice(
            self.namespace, self.service, [builders.make_endpoint(a, ready=ready) for a in addresses],
            port=port, port_name=port_name,
        )
        path = Kube.slice_path(self.namespace, body["metadata"]["name"])
        if self.kube.get_or_none(path) is None:
            self.kube.create(Kube.slice_path(self.namespace), body)
        else:
            self.kube.apply(path, body)

    def register_apiservice(self, *, port: int | None = 443, insecure: bool = False,
                            ca_bundle: bytes | None = None, labels: dict[str, str] | None = None) -> None:
        body = builders.make_apiservice(
            self.group, self.version, service_namespace=self.namespace, service_name=self.service,
            port=port, ca_bundle=None if insecure else (ca_bundle or self.ca.cert_pem),
            insecure_skip_tls_verify=insecure, labels=labels,
        )
        self.kube.create(Kube.apiservice_path(), body)

    def apiservice(self) -> dict[str, Any]:
        return dict(self.kube.apiservice(self.name))

    def set_state(self, **state: Any) -> None:
        for s in self.servers:
            s.set_state(**state)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def remove(self) -> None:
        self.stop()
        self.kube.delete(Kube.apiservice_path(self.name))
