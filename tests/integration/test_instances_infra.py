"""The two-instance control plane and its cuts do what the user's-path tests rely on (DESIGN.md 9)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import httpx
import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions, wait_for
from tests.cluster.multiplane import MultiControlPlane
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

THEIRS = "Available"


def kubernetes_endpoints(kube: Kube) -> tuple[set[str], set[int]]:
    """Addresses and ports of the `default/kubernetes` EndpointSlices, which kube-apiserver writes."""
    slices = kube.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                      labelSelector="kubernetes.io/service-name=kubernetes")["items"]
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    ports = {p["port"] for s in slices for p in s.get("ports") or []}
    return addresses, ports


def test_kubernetes_endpointslice_lists_every_instance_on_one_port(
    two_apiservers: MultiControlPlane, two_apiservers_kube: Kube
) -> None:
    # Each instance adds itself on its own lease reconcile, so the second may show up seconds later.
    want = set(two_apiservers.addresses)
    addresses, ports = wait_for(lambda: (found := kubernetes_endpoints(two_apiservers_kube))[0] == want and found,
                                60, f"default/kubernetes EndpointSlice listing {sorted(want)}")
    assert ports == {two_apiservers.port}
    # Every instance serves the same cluster state: ask the other one too.
    other = Kube(two_apiservers.instance_server(1), two_apiservers.ssl_context())
    try:
        assert kubernetes_endpoints(other) == (addresses, ports)
    finally:
        other.close()


def reply_if(kube: Kube, path: str, status: int, body: str) -> httpx.Response | None:
    reply = kube.http.get(path)
    return reply if reply.status_code == status and body in reply.text else None


def touch_service(kube: Kube, api: AggregatedAPI, value: str) -> None:
    """Makes kube-apiserver re-check the APIService now rather than on its 30 s resync. The Service,
    not the APIService: an APIService update also makes each instance's single registration worker
    download the server's OpenAPI through its proxy, which against a dropped SYN blocks that worker
    for up to its 1 min timeout, and until then the instance's proxy still dials the server (5 s
    "context deadline exceeded") instead of answering "service unavailable" at once."""
    kube.merge_patch(Kube.service_path(api.namespace, api.service), {"metadata": {"labels": {"touched": value}}})


def test_cutting_every_instance_fails_kube_apiservers_check_and_the_proxy(
    two_apiservers: MultiControlPlane, two_apiservers_kube: Kube,
    two_apiservers_aggregated_api: Callable[..., AggregatedAPI],
) -> None:
    api = two_apiservers_aggregated_api(servers=1)
    register_healthy(api)
    wait_conditions(api, {THEIRS: ("True", "Passed")}, 60)
    discovery = f"/apis/{api.group}/{api.version}"
    assert two_apiservers_kube.http.get(discovery).status_code == 200

    server = api.servers[0]
    started = time.monotonic()
    with two_apiservers.cut("all", server.address, server.port):
        touch_service(two_apiservers_kube, api, "cut")
        # Its check dials with a 5 s timeout: a dropped SYN fails only when that runs out.
        cut = wait_conditions(api, {THEIRS: ("False", "FailedDiscoveryCheck")}, 60)
        flipped = time.monotonic() - started
        replies: list[httpx.Response] = []
        for i in range(two_apiservers.instances):
            instance = Kube(two_apiservers.instance_server(i), two_apiservers.ssl_context())
            try:
                # Each instance's proxy learns the condition from its own watch: wait, do not assume.
                replies.append(wait_for(functools.partial(reply_if, instance, discovery, 503, "service unavailable"),
                                        30, f"503 service unavailable from instance {i}"))
            finally:
                instance.close()
    print(f"\nFalse after {flipped:.1f} s: {cut[THEIRS]['message']!r}\n503 body: {replies[0].text!r}")

    started = time.monotonic()
    touch_service(two_apiservers_kube, api, "restored")
    wait_conditions(api, {THEIRS: ("True", "Passed")}, 60)
    print(f"True again after {time.monotonic() - started:.1f} s")
    wait_for(lambda: two_apiservers_kube.http.get(discovery).status_code == 200, 30, "200 through instance 0")
