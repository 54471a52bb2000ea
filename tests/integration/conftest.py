"""Fixtures for the user's path (DESIGN.md 9): k8s.io/sample-apiserver on the session plane, and a
control plane of two kube-apiservers on one etcd, each its own uid, so a test can cut one
instance's (or every instance's) path to an aggregated server. That one is separate from the
session plane of tests/conftest.py, which the other tests share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import pki
from tests.cluster.controlplane import ensure_binaries
from tests.cluster.fixtures import admin_client, aggregated_apis, new_namespace, running
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube
from tests.cluster.multiplane import MultiControlPlane, unavailable_reason
from tests.cluster.operator import install_manifests
from tests.cluster.sampleapiserver import sample_apiserver_fixture


@pytest.fixture(scope="module")
def two_apiservers(request: pytest.FixtureRequest) -> Iterator[MultiControlPlane]:
    """etcd and kube-apiservers at 10.250.0.2 and 10.250.0.3 (uids 64001, 64002) on one port, the
    operator's manifests applied. `.cut(i | "all", address, port)` cuts instances from a server."""
    reason = unavailable_reason()
    if reason:
        # CI must run these: a machine that cannot is a broken CI machine, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(f"two kube-apiservers cannot run here: {reason}")
        pytest.skip(reason)
    plane = MultiControlPlane(workdir=Path(tempfile.mkdtemp(prefix="apiservice-operator-multi-")),
                              bin_dir=ensure_binaries())
    with running(plane, request, "two-instance control plane"):
        install_manifests(plane)
        yield plane


@pytest.fixture(scope="module")
def two_apiservers_kube(two_apiservers: MultiControlPlane) -> Iterator[Kube]:
    """The admin's client, through instance 0."""
    yield from admin_client(two_apiservers.server, two_apiservers.ssl_context())


@pytest.fixture
def two_apiservers_namespace(two_apiservers_kube: Kube) -> str:
    return new_namespace(two_apiservers_kube, "m")


@pytest.fixture
def two_apiservers_aggregated_api(
    two_apiservers_kube: Kube, two_apiservers_namespace: str, test_ca: pki.KeyPair, tmp_path: Path
) -> Iterator[Callable[..., AggregatedAPI]]:
    """Like tests/conftest.py's aggregated_api, in the two-instance plane."""
    yield from aggregated_apis(two_apiservers_kube, two_apiservers_namespace, test_ca, tmp_path)


# k8s.io/sample-apiserver, one for the session: its APIService name is fixed, so only one can exist
sample_apiserver = pytest.fixture(scope="session", name="sample_apiserver")(sample_apiserver_fixture)
