"""What both control-plane fixtures (the session plane of tests/conftest.py and the two-instance plane
of tests/integration/conftest.py) do alike: an admin client, a fresh namespace per test, aggregated
test servers made on demand."""

from __future__ import annotations

import contextlib
import itertools
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.cluster import pki
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube

_ns_counter = itertools.count(1)


class Plane(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...
    def logs(self, lines: int) -> str: ...
    def cleanup_workdir(self) -> None: ...


@contextlib.contextmanager
def running(plane: Plane, request: pytest.FixtureRequest, label: str) -> Iterator[None]:
    """Starts the plane, stops it after; its logs are printed and its folder kept for a look when a
    test failed meanwhile."""
    plane.start()
    failed_before = request.session.testsfailed
    try:
        yield
    finally:
        failed = request.session.testsfailed > failed_before
        if failed:
            print(f"\n===== {label} logs (tests failed) =====\n{plane.logs(200)}")
        plane.stop()
        if not failed:
            plane.cleanup_workdir()


def admin_client(server: str, context: ssl.SSLContext) -> Iterator[Kube]:
    client = Kube(server, context)
    yield client
    client.close()


def new_namespace(kube: Kube, prefix: str) -> str:
    # No controller-manager: namespaces never finish terminating, so each test gets a new one
    # and never waits on deletion.
    name = f"{prefix}{next(_ns_counter)}-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def aggregated_apis(kube: Kube, namespace: str, test_ca: pki.KeyPair,
                    tmp_path: Path) -> Iterator[Callable[..., AggregatedAPI]]:
    """Factory: make(servers=1) -> an unregistered AggregatedAPI with running servers; removed after."""
    made: list[AggregatedAPI] = []

    def make(servers: int = 1, *, service: str = "api", serving_ca: pki.KeyPair | None = None) -> AggregatedAPI:
        group = f"{namespace}-{len(made)}.test.example.com"
        api = AggregatedAPI(kube, namespace, service, group, "v1", tmp_path, test_ca)
        made.append(api)
        if servers:
            api.start_servers(servers, serving_ca=serving_ca)
        return api

    yield make
    for api in made:
        api.remove()
