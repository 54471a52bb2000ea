"""The clients' view against the real kube-apiserver (DESIGN 10): a server that serves its
group/version but whose root /apis fails leaves the group/version Stale or missing in
kube-apiserver's aggregated discovery, which kubectl and every controller read. kube-apiserver's own
Available stays True/Passed; ours says False/DiscoveryStale, and True again once its discovery is
Current, never blaming the repaired server meanwhile. A server whose /openapi fails leaves it out
of kube-apiserver's /openapi/v3: ours says Degraded/OpenAPIUnavailable. kube-apiserver refreshes its
caches within a minute, so each case takes one or two."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, condition, wait_conditions, wait_for
from tests.cluster.operator import OperatorProcess
from tests.integration.test_clients_view_infra import discovery_entry
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS = "apiservice-operator.io/Available"
# the bound: kube-apiserver reads a new APIService's discovery at once and refreshes each
# minute; the server's own answer, asked directly, makes the verdict without a grace
STALE_WITHIN = 90
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
    # the server's own answer, asked directly, is quoted: whose fault it is
    assert "Its server's own /apis (v2 Accept) from" in message, message
    # repaired: True again as soon as kube-apiserver's discovery is Current, never blaming the server
    api.set_state(mode="healthy")
    after_repair(api, OURS, ("True", "Passed"), "DiscoveryStale")


def after_repair(api: AggregatedAPI, ctype: str, healthy: tuple[str, str], blame: str) -> None:
    """Polls `ctype` until `healthy`; past the check that was running at the repair (a probe interval
    and a check), `blame` must not be said again: kube-apiserver's cache is behind, not the server."""
    repaired = time.monotonic()
    seen: list[tuple[float, str, str]] = []
    while time.monotonic() - repaired < CURRENT_WITHIN:
        now = condition(api.apiservice(), ctype) or {}
        state = (str(now.get("status")), str(now.get("reason")))
        seen.append((time.monotonic() - repaired, *state))
        if state == healthy:
            break
        time.sleep(1)
    states = sorted({(s, r) for _, s, r in seen})
    assert healthy in states, f"not {healthy} again within {CURRENT_WITHIN} s: {states}"
    late = [(round(t), r) for t, _, r in seen if r == blame and t > REPAIR_SEEN_WITHIN]
    assert not late, f"blamed the repaired server after {REPAIR_SEEN_WITHIN} s: {late}; states {states}"
    assert {r for _, r in states} <= {blame, healthy[1], "AwaitingKubeAPIServer"}, states
    print(f"{healthy} {time.monotonic() - repaired:.0f} s after the repair; states meanwhile {states}")


DEGRADED = "apiservice-operator.io/Degraded"
# the operator's --probe-interval in the suite is 2 s: a check started before the repair ends within its budget
REPAIR_SEEN_WITHIN = 10


def test_a_server_whose_openapi_fails_is_degraded_while_kube_apiserver_says_passed(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, operator: OperatorProcess,
) -> None:
    """kube-apiserver leaves the group/version out of /openapi/v3 (kubectl explain fails): Available
    stays True, Degraded names it, quoting the server's own /openapi answers."""
    api = aggregated_api(servers=1)
    api.set_state(mode="healthy", openapi="status", openapi_status=503)
    register_healthy(api)
    started = time.monotonic()
    found = wait_conditions(api, {DEGRADED: ("True", "OpenAPIUnavailable"), OURS: ("True", "Passed"),
                                  "Available": ("True", "Passed")}, STALE_WITHIN)
    message = found[DEGRADED]["message"]
    print(f"\n{api.name}: Degraded/OpenAPIUnavailable after {time.monotonic() - started:.0f} s: {message[:400]}")
    assert "kubectl explain" in message and "/openapi/v3 from" in message and ": 503 in" in message, message
    assert "aggregated discovery Current in 1/1 instances" in found[OURS]["message"], found[OURS]["message"]
    api.set_state(mode="healthy")
    after_repair(api, DEGRADED, ("False", "AsExpected"), "OpenAPIUnavailable")



@pytest.mark.parametrize("status", [500, 404])
def test_a_root_apis_that_answers_another_error_keeps_discovery_current_by_the_fallback(
    aggregated_api: Callable[..., AggregatedAPI], kube: Kube, operator: OperatorProcess, status: int,
) -> None:
    """kube-apiserver falls back to /apis/<group>/<version> for any answer but 503 (and its timeout):
    clients are served, so ours stays True, with no Degraded from the clients' view either (the
    test server answers /openapi/v3 404 and serves /openapi/v2, which kube-apiserver converts)."""
    api = aggregated_api(servers=1)
    api.set_state(mode="healthy", apis="status", apis_status=status)
    register_healthy(api)
    found = wait_conditions(api, {OURS: ("True", "Passed"), DEGRADED: ("False", "AsExpected"),
                                  "Available": ("True", "Passed")}, STALE_WITHIN,
                            messages={OURS: "aggregated discovery Current in 1/1 instances$"})
    entry = discovery_entry(kube, api.group, api.version)
    assert entry is not None and entry.get("freshness", "Current") == "Current", entry
    wait_for(lambda: f"apis/{api.group}/{api.version}" in kube.get("/openapi/v3")["paths"], 60,
             "its OpenAPI in kube-apiserver's /openapi/v3")
    print(f"\nroot /apis {status}: {found[OURS]['message']}")
