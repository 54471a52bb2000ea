"""Several kube-apiservers on one etcd, each its own unprivileged uid, and cuts of one instance's path.

DESIGN.md 9, "The instances" and "Cutting one process's path in a test": instance i binds and
advertises 10.250.0.(2+i) (hack/netns-run puts those on lo; .1 is the session plane's, .10 and up
are aggregated test servers'), all on one port, so the `default/kubernetes` EndpointSlice that
kube-apiserver maintains itself lists every instance under one port. Each runs as its own uid
through setpriv, so an iptables owner rule in the namespace can cut exactly one of them (or all)
from an aggregated server:

    plane = MultiControlPlane(workdir, bin_dir).start()
    with plane.cut(1, "10.250.0.10", 8443):     # instance 1 (uid 64002) can no longer reach it
        ...
    handle = plane.cut("all", "10.250.0.10", 8443)
    handle.restore()

File permissions, a test harness's compromise: the PKI is made once in `workdir/pki` (root only,
the admin key included); each instance gets its own copy of just the files kube-apiserver reads in
`workdir/instance-<i>/`, owned by its uid and 0700, so no instance reads another's folder nor the
admin credentials. The workdir itself becomes 0711 (traversable, not listable). Runs only as real
root (setpriv to an unmapped uid fails in a user namespace), inside hack/netns-run.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.cluster.controlplane import ControlPlane, ControlPlaneError, _Proc, free_port

DEFAULT_UIDS = (64001, 64002, 64003, 64004)
# kube-apiserver's conventional port, outside the kernel's ephemeral range (32768-60999 by default),
# so no later free_port() probe (the session plane's port, an operator's metrics port) can pick it.
PREFERRED_PORT = 6443
_TEST_NETWORK = ipaddress.ip_network("10.250.0.0/24")
# Files of _make_pki that kube-apiserver itself reads: the admin pair and the CA keys stay behind.
_INSTANCE_FILES = ("ca.crt", "front-proxy-ca.crt", "apiserver.crt", "apiserver.key", "front-proxy-client.crt",
                   "front-proxy-client.key", "sa.key", "sa.pub")


def instance_address(index: int) -> str:
    return f"10.250.0.{2 + index}"


def _port_free_everywhere(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_port() -> int:
    """One port free on 0.0.0.0, so no other listener in the namespace (the session plane binds
    0.0.0.0) holds it on any address."""
    return PREFERRED_PORT if _port_free_everywhere(PREFERRED_PORT) else free_port("0.0.0.0")


def _traversable_by_others(path: Path) -> bool:
    """Every folder above `path` searchable by an unrelated uid (o+x)."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.resolve().parents)


@functools.cache
def iptables() -> str:
    """The iptables binary whose owner match works in this network namespace: the Debian default
    (nft) first, then legacy. Probed by inserting and deleting a rule that matches nothing we send."""
    probe = ["OUTPUT", "-d", "10.250.0.255", "-p", "tcp", "--dport", "9", "-m", "owner",
             "--uid-owner", "65534", "-j", "DROP"]
    errors = []
    for binary in ("iptables", "iptables-nft", "iptables-legacy"):
        if shutil.which(binary) is None:
            errors.append(f"{binary}: not installed")
            continue
        inserted = subprocess.run([binary, "-w", "-I", *probe], capture_output=True, text=True)
        if inserted.returncode == 0:
            subprocess.run([binary, "-w", "-D", *probe], capture_output=True, check=True)
            return binary
        errors.append(f"{binary}: {inserted.stderr.strip()}")
    raise ControlPlaneError("no iptables with the owner match works here (apt-get install iptables): "
                            + "; ".join(errors))


def unavailable_reason() -> str | None:
    """Why a MultiControlPlane cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: each kube-apiserver runs as its own uid (setpriv) and cuts use iptables"
    for tool in ("setpriv", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    try:
        iptables()
    except ControlPlaneError as exc:
        return str(exc)
    try:
        with socket.socket() as s:
            s.bind((instance_address(0), 0))
    except OSError:
        return "needs the test network namespace: run under hack/netns-run"
    return None


@dataclass
class Cut:
    """DROP rules in the namespace's OUTPUT chain; restore() deletes exactly those, once."""

    binary: str
    rules: list[list[str]]
    restored: bool = False

    def apply(self) -> Cut:
        done: list[list[str]] = []
        try:
            for rule in self.rules:
                subprocess.run([self.binary, "-w", "-I", "OUTPUT", *rule], capture_output=True, text=True,
                               check=True)
                done.append(rule)
        except subprocess.CalledProcessError as exc:
            for rule in done:
                subprocess.run([self.binary, "-w", "-D", "OUTPUT", *rule], capture_output=True)
            raise ControlPlaneError(f"iptables refused {rule}: {exc.stderr.strip()}") from None
        return self

    def restore(self) -> None:
        if self.restored:
            return
        self.restored = True
        failures = []
        for rule in self.rules:
            result = subprocess.run([self.binary, "-w", "-D", "OUTPUT", *rule], capture_output=True, text=True)
            if result.returncode != 0:
                failures.append(f"{rule}: {result.stderr.strip()}")
        if failures:
            raise ControlPlaneError("could not delete iptables rules: " + "; ".join(failures))

    def __enter__(self) -> Cut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


@dataclass
class MultiControlPlane(ControlPlane):
    """One etcd, `instances` kube-apiservers (instance i: 10.250.0.(2+i):port as uid uids[i]).

    A ControlPlane where it matters to callers: `kubeconfig`, `server`, `kubectl()`, `ca_path` and
    `ssl_context()` are the admin's through instance 0, so tests.cluster.operator's helpers work as
    they are. The single-instance fault helpers inherited from ControlPlane (stop_apiserver,
    signal_apiserver, ...) act on instance 0; wait_ready() waits for every instance."""

    instances: int = 2
    uids: tuple[int, ...] = DEFAULT_UIDS
    _procs: list[_Proc] = field(init=False, default_factory=list)
    _cuts: list[Cut] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.instances <= len(self.uids):
            raise ValueError(f"instances must be 1..{len(self.uids)} (one uid each), got {self.instances}")
        self.port = self.port or pick_port()
        self.extra_sans = (*self.extra_sans, *self.addresses)
        super().__post_init__()

    @property
    def addresses(self) -> list[str]:
        return [instance_address(i) for i in range(self.instances)]

    def instance_server(self, index: int) -> str:
        return f"https://{instance_address(index)}:{self.port}"

    @property
    def server(self) -> str:
        return self.instance_server(0)

    def instance_kubeconfig(self, index: int) -> Path:
        """The admin's kubeconfig for instance `index` only (written on first use)."""
        path = self.workdir / f"admin-{index}.kubeconfig"
        if not path.exists():
            self.write_kubeconfig(path, self.instance_server(index))
        return path

    def uid(self, index: int) -> int:
        return self.uids[index]

    # --- lifecycle ------------------------------------------------------------------------------
    def _binary(self) -> Path:
        """kube-apiserver where its uid can exec it: ~/.cache under a 0700 /root is not, so then a
        hard link (or a copy, across file systems) in the workdir."""
        original = self.bin_dir / "kube-apiserver"
        if _traversable_by_others(original):
            return original
        local = self.workdir / "bin" / "kube-apiserver"
        if not local.exists():
            local.parent.mkdir(mode=0o755, exist_ok=True)
            try:
                os.link(original, local)
            except OSError:
                shutil.copy2(original, local)
        return local

    def _instance_dir(self, index: int, paths: dict[str, Path]) -> dict[str, Path]:
        uid = self.uids[index]
        home = self.workdir / f"instance-{index}"
        (home / "pki").mkdir(parents=True, exist_ok=True)
        (home / "certs").mkdir(exist_ok=True)
        mine: dict[str, Path] = {}
        for key, source in paths.items():
            if source.name in _INSTANCE_FILES:
                mine[key] = home / "pki" / source.name
                shutil.copyfile(source, mine[key])
        for path in (home, home / "pki", home / "certs", *mine.values()):
            os.chown(path, uid, uid)
            path.chmod(0o700 if path.is_dir() else 0o600)
        return mine

    def start(self) -> MultiControlPlane:
        if not _traversable_by_others(self.workdir):
            raise ControlPlaneError(f"a folder above {self.workdir} is not searchable by other uids (o+x)")
        self.workdir.chmod(0o711)
        paths = self._make_pki()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        binary = self._binary()
        self._etcd = _Proc("etcd", self.etcd_argv(), logs / "etcd.log")
        self._procs = []
        for i in range(self.instances):
            argv = self.apiserver_argv(
                self._instance_dir(i, paths), bind_address=instance_address(i),
                advertise_address=instance_address(i), port=self.port,
                cert_dir=self.workdir / f"instance-{i}" / "certs", binary=binary, uid=self.uids[i],
            )
            # kube-apiserver names its identity Lease after a hash of the hostname: on one host
            # both instances would share (and fight over) one. Real instances run on their own hosts.
            argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', f"kube-apiserver-{i}", *argv]
            self._procs.append(_Proc(f"kube-apiserver-{i}", argv, logs / f"kube-apiserver-{i}.log"))
        self._apiserver = self._procs[0]
        self.write_kubeconfig(self.kubeconfig, self.server)
        try:
            self._etcd.start()
            for proc in self._procs:
                proc.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        waited = timeout or self.ready_timeout
        deadline = time.monotonic() + waited
        context = self.ssl_context()
        pending = dict(enumerate(self._procs))
        last: dict[int, str] = {}
        while pending and time.monotonic() < deadline:
            for proc in (self._etcd, *self._procs):
                if not proc.alive():
                    raise ControlPlaneError(f"{proc.name} exited early\n{self.logs()}")
            for i in list(pending):
                try:
                    conn = http.client.HTTPSConnection(instance_address(i), self.port, context=context, timeout=5)
                    conn.request("GET", "/readyz")
                    resp = conn.getresponse()
                    body = resp.read().decode(errors="replace")
                    conn.close()
                    if resp.status == 200:
                        del pending[i]
                    else:
                        last[i] = f"HTTP {resp.status}: {body[-400:]}"
                except OSError as exc:
                    last[i] = repr(exc)
            if pending:
                time.sleep(0.25)
        if pending:
            states = "; ".join(f"instance {i}: {last.get(i, 'no answer yet')}" for i in pending)
            raise ControlPlaneError(f"kube-apiserver not ready after {waited}s: {states}\n{self.logs()}")

    def stop(self) -> None:
        for cut in self._cuts:
            with contextlib.suppress(ControlPlaneError):
                cut.restore()
        self._cuts.clear()
        for proc in (*self._procs, getattr(self, "_etcd", None)):
            if proc is not None:
                proc.stop()

    def logs(self, lines: int = 60) -> str:
        parts = []
        for proc in (getattr(self, "_etcd", None), *self._procs):
            if proc is not None:
                parts.append(f"----- {proc.name} (last {lines} lines) -----\n{proc.tail(lines)}")
        return "\n".join(parts)

    # --- cuts -----------------------------------------------------------------------------------
    def cut(self, which: int | Literal["all"] | Iterable[int], address: str, port: int, *,
            reject: bool = False) -> Cut:
        """Drops every packet the chosen instances send to address:port, from now until restore()
        (or the end of a `with` block, or stop()). Established connections die too: the rule is not
        limited to new connections. reject=True answers with a TCP reset instead: a refused
        connection fails at once, where a dropped one waits out each client's timeout."""
        if ipaddress.ip_address(address) not in _TEST_NETWORK:
            raise ValueError(f"{address} is outside the test network {_TEST_NETWORK}")
        if which == "all":
            indexes: list[int] = list(range(self.instances))
        elif isinstance(which, int):
            indexes = [which]
        else:
            indexes = list(which)
        for i in indexes:
            if not 0 <= i < self.instances:
                raise ValueError(f"no instance {i} (have {self.instances})")
        target = ["REJECT", "--reject-with", "tcp-reset"] if reject else ["DROP"]
        rules = [["-d", address, "-p", "tcp", "--dport", str(port), "-m", "owner",
                  "--uid-owner", str(self.uids[i]), "-j", *target] for i in indexes]
        cut = Cut(iptables(), rules).apply()
        self._cuts.append(cut)
        return cut
