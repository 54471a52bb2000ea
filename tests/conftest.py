"""Fixtures: a session-wide real control plane, a fresh namespace per test, aggregated test servers."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pki
from tests.cluster.controlplane import ControlPlane, ensure_binaries
from tests.cluster.fixtures import admin_client, aggregated_apis, new_namespace, running
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube
from tests.cluster.operator import OperatorProcess, install_manifests, service_account_kubeconfig


def _in_test_netns() -> bool:
    """hack/netns-run makes 10.250.0.x local; without it EndpointSlices cannot point at our servers."""
    try:
        with socket.socket() as s:
            s.bind(("10.250.0.1", 0))
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: "run_last" in item.keywords)  # stable: the others keep their order
    if _in_test_netns():
        return
    reason = "needs the local control plane's network namespace: run `make test` (hack/netns-run)"
    cluster = [item for item in items if "cluster" in item.keywords]
    if cluster and os.environ.get("CI") == "true":
        # under CI a cluster test that cannot run is a broken run, never a quiet skip or xfail
        raise pytest.UsageError(f"{len(cluster)} cluster tests collected outside the network namespace: {reason}")
    for item in cluster:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    workdir = Path(tempfile.mkdtemp(prefix="apiservice-operator-cp-"))
    cp = ControlPlane(workdir=workdir, bin_dir=ensure_binaries())
    with running(cp, request, "control plane"):
        yield cp


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    yield from admin_client(control_plane.server, control_plane.ssl_context())


@pytest.fixture
def namespace(kube: Kube) -> str:
    return new_namespace(kube, "t")


@pytest.fixture(scope="session")
def test_ca() -> pki.KeyPair:
    return pki.make_ca("aggregated-test-ca")


@pytest.fixture
def aggregated_api(
    kube: Kube, namespace: str, test_ca: pki.KeyPair, tmp_path: Path
) -> Iterator[Callable[..., AggregatedAPI]]:
    """Factory: aggregated_api(servers=1) -> an unregistered AggregatedAPI with running servers."""
    yield from aggregated_apis(kube, namespace, test_ca, tmp_path)


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    install_manifests(control_plane)
    return service_account_kubeconfig(control_plane, tmp_path_factory.mktemp("operator") / "sa.kubeconfig")


# Short interval so periodic re-probes show up within a test; the budget stays the real 5 s.
OPERATOR_ARGS = ["--probe-interval", "2", "--resync-interval", "3", "--log-level", "DEBUG", "--path-probe", "instances"]


@pytest.fixture(scope="session")
def operator_port() -> int:
    from tests.cluster.controlplane import free_port

    return free_port("0.0.0.0")


@pytest.fixture(scope="session")
def explain_port() -> int:
    from tests.cluster.controlplane import free_port

    return free_port("127.0.0.1")


@pytest.fixture(scope="session")
def operator(
    operator_kubeconfig: Path, operator_port: int, explain_port: int, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """One operator for the session, running as its own ServiceAccount."""
    proc = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                           # APIServices labelled for the leader-election tests belong to their own operators
                           [*OPERATOR_ARGS, "--metrics-port", str(operator_port), "--explain-port", str(explain_port),
                            "--selector", "!ha-test"])
    proc.start()
    failed_before = request.session.testsfailed
    try:
        yield proc
    finally:
        code = proc.stop()
        if request.session.testsfailed > failed_before or code not in (0, None):
            print(f"\n===== operator log (exit {code}) =====\n{proc.logs()[-20000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test that used the session operator carries what the operator logged meanwhile (its
    INFO and above, and every line naming the test's namespace): a CI log shows the failure's own
    section, while the session's whole log comes only at its end and is often cut."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    proc = funcargs.get("operator")
    if not isinstance(proc, OperatorProcess):
        return
    if call.when == "setup":
        item.stash[_LOG_START] = proc.log_path.stat().st_size if proc.log_path.exists() else 0
    elif call.when == "call" and report.failed:
        with proc.log_path.open("rb") as f:
            f.seek(item.stash.get(_LOG_START, 0))
            lines = f.read().decode(errors="replace").splitlines()
        namespace = funcargs.get("namespace")
        kept = [line for line in lines if " DEBUG " not in line or (namespace and namespace in line)]
        report.sections.append(("operator log during the test", "\n".join(kept[-120:])))


_LOG_START = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The fault suite's tally again at the very end, where a CI log is read first."""
    path = config._tmp_path_factory.getbasetemp() / "fault-summary.txt"  # type: ignore[attr-defined]
    if path.exists():
        terminalreporter.write_sep("=", "faults and bad input")
        terminalreporter.write_line(path.read_text().rstrip())
