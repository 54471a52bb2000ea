"""The clients' view against the real kube-apiserver (DESIGN 10): a server that serves its
group/version but whose root /apis fails leaves the group/version Stale or missing in
kube-apiserver's aggregated discovery, which kubectl and every controller read. kube-apiserver's own
Available stays True/Passed; ours says False/DiscoveryStale, and True again once its discovery is
Current, never blaming the repaired server meanwhile. kube-apiserver refreshes its cache within a
minute, so each case takes one or two."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, condition, wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.integration.test_clients_view_infra import discovery_entry
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
# kube-apiserver's discovery refresh (60 s) + our grace after its own Available changed (90 s) + a check
STALE_WITHIN = 180
CURRENT_WITHIN = 120


@pytest.mark.parametrize(("state", "shows"), [
    pytest.param({"apis": "status", "apis_status": 503}, "Stale", id="root-apis-503"),
    # over kube-apiserver's 5 s TimeoutHandler for the discovery fetch
    pytest.param({"apis": "delay", "apis_delay": 7}, "Stale", id="root-apis-takes-7s"),
    # kube-apiserver keeps such a group/version listed, without resources (kube-aggregator handler_discovery.go)
    pytest.param({"apis": "without-group"}, "listed without the resources", id="v2-document-without-the-group"),
])
def test_a_server_whose_root_apis_fails_is_discovery_stale_while_kube_apiserver_says_passed(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, operator: OperatorProcess, state: dict[str, object],
    shows: str,
) -> None:
    api = aggregated_api(servers=1)
    api.set_state(mode="healthy", **state)
    register_healthy(api)
    started = time.monotonic()
    found = wait_conditions(api, {OURS: ("False", "DiscoveryStale"), "Available": ("True", "Passed")}, STALE_WITHIN)
    took = time.monotonic() - started
    message = found[OURS]["message"]
    entry = discovery_entry(kube, api.group, api.version)
    print(f"\n{api.name}: ours False/DiscoveryStale after {took:.0f} s; kube-apiserver's discovery entry: "
          f"{entry and entry.get('freshness', 'Current')}; message: {message[:300]}")
    assert shows in message and "stale GroupVersion discovery" in message, message
    # repaired: True again as soon as kube-apiserver's discovery is Current, never blaming the server
    api.set_state(mode="healthy")
    repaired = time.monotonic()
    seen: set[tuple[str, str]] = set()

    def watch() -> dict[str, object]:
        ours = condition(api.apiservice(), OURS) or {}
        seen.add((str(ours.get("status")), str(ours.get("reason"))))
        return ours

    while time.monotonic() - repaired < CURRENT_WITHIN:
        now = watch()
        if (now.get("status"), now.get("reason")) == ("True", "Passed"):
            break
        time.sleep(1)
    assert ("True", "Passed") in seen, f"not True again within {CURRENT_WITHIN} s: {sorted(seen)}"
    assert not {s for s in seen if s[1] not in ("DiscoveryStale", "Passed", "AwaitingKubeAPIServer")}, seen
    print(f"True/Passed {time.monotonic() - repaired:.0f} s after the repair; states meanwhile {sorted(seen)}")

