"""k8s.io/sample-apiserver against the local control plane (DESIGN.md 9): the infrastructure works,
and it shows the blind spot of kube-apiserver's own check. With its `system:auth-delegator`
binding deleted it refuses ordinary users (500 through kube-apiserver, 401 direct) while
kube-apiserver's `Available` stays True/Passed; restoring the binding heals it."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.sampleapiserver import GROUP, SampleAPIServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DISCOVERY = f"/apis/{GROUP}/v1alpha1"
# sample-apiserver caches allowed SubjectAccessReviews and TokenReviews for 10 s (its
# --authorization-webhook-cache-authorized-ttl, --authentication-token-webhook-cache-ttl): a flip
# shows within seconds of that; the bound leaves room for a loaded 2-core machine.
FLIP_TIMEOUT = 90


def _user_token(control_plane: ControlPlane, namespace: str) -> str:
    """An ordinary user: a ServiceAccount with no RBAC binding of its own (system:discovery lets
    every authenticated identity read discovery)."""
    control_plane.kubectl("create", "serviceaccount", "ordinary-user", "-n", namespace)
    return control_plane.kubectl("create", "token", "ordinary-user", "-n", namespace,
                                 "--duration=1h").stdout.strip()


def _poll(get: Callable[[], httpx.Response], want: int, what: str, since: float) -> tuple[httpx.Response, float]:
    """Polls until the status is `want`; returns that response and the time since `since`."""
    deadline = time.monotonic() + FLIP_TIMEOUT
    last: Any = None
    while True:
        try:
            last = get()
            if last.status_code == want:
                return last, time.monotonic() - since
        except httpx.HTTPError as exc:
            last = exc
        if time.monotonic() >= deadline:
            summary = f"HTTP {last.status_code}: {last.text[:600]}" if isinstance(last, httpx.Response) else last
            raise AssertionError(f"{what}: no {want} within {FLIP_TIMEOUT}s; last: {summary}")
        time.sleep(0.5)


def _show(phase: str, what: str, resp: httpx.Response, took: float | None = None) -> None:
    after = f" {took:.1f}s after the binding changed" if took is not None else ""
    print(f"[{phase}] {what}: HTTP {resp.status_code}{after}: {resp.text.strip()[:600]}")


def test_auth_delegator_binding_is_kube_apiservers_blind_spot(
    control_plane: ControlPlane, sample_apiserver: SampleAPIServer, namespace: str
) -> None:
    server = sample_apiserver
    token = _user_token(control_plane, namespace)
    kube_ca = ssl.create_default_context(cafile=str(control_plane.ca_path))
    headers = {"Authorization": f"Bearer {token}"}

    def through_kube() -> httpx.Response:
        with httpx.Client(base_url=control_plane.server, verify=kube_ca, timeout=10) as client:
            return client.get(DISCOVERY, headers=headers)

    def direct() -> httpx.Response:
        return server.direct_get(DISCOVERY, token=token)

    # --- healthy ----------------------------------------------------------------------------
    healthy = server.available()
    assert healthy is not None and (healthy["status"], healthy["reason"]) == ("True", "Passed"), healthy
    print(f"\n[healthy] kube-apiserver's Available: {healthy}")
    resp = through_kube()
    _show("healthy", "user's discovery through kube-apiserver", resp)
    assert resp.status_code == 200
    body = resp.json()
    assert (body["kind"], body["groupVersion"]) == ("APIResourceList", f"{GROUP}/v1alpha1"), body
    assert "flunders" in {r["name"] for r in body["resources"]}, body
    resp = direct()
    _show("healthy", f"direct GET {server.address}:{server.port} with the user's token", resp)
    assert resp.status_code == 200

    # --- the auth-delegator binding deleted -----------------------------------------------------
    server.delete_auth_delegator_binding()
    deleted = time.monotonic()
    try:
        resp, took = _poll(through_kube, 500, "user's discovery through kube-apiserver", deleted)
        _show("binding deleted", "user's discovery through kube-apiserver", resp, took)
        assert "subjectaccessreviews" in resp.text and "forbidden" in resp.text, resp.text
        resp, took = _poll(direct, 401, "direct GET with the user's token", deleted)
        _show("binding deleted", f"direct GET {server.address}:{server.port} with the user's token", resp, took)
        # kube-apiserver's check authenticates as system:masters, which the server never asks
        # kube-apiserver about: it still passes, and never flipped (same transition time).
        blind = server.available()
        print(f"[binding deleted] kube-apiserver's Available: {blind}")
        assert blind is not None and (blind["status"], blind["reason"]) == ("True", "Passed"), blind
        assert blind["lastTransitionTime"] == healthy["lastTransitionTime"], (healthy, blind)
    finally:
        # --- restored ---------------------------------------------------------------------------
        server.restore_auth_delegator_binding()
        restored_at = time.monotonic()
    resp, took = _poll(through_kube, 200, "user's discovery through kube-apiserver after the restore",
                       restored_at)
    _show("restored", "user's discovery through kube-apiserver", resp, took)
    assert resp.json()["kind"] == "APIResourceList"
    resp, took = _poll(direct, 200, "direct GET with the user's token after the restore", restored_at)
    _show("restored", f"direct GET {server.address}:{server.port} with the user's token", resp, took)
    restored = server.available()
    print(f"[restored] kube-apiserver's Available: {restored}")
    assert restored is not None and (restored["status"], restored["reason"]) == ("True", "Passed"), restored
