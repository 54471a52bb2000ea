"""Backends that change hands, on APIServices recorded from kube-apiserver v1.37.2 (tests/unit/recorded):
a takeover of v1beta1.metrics.k8s.io by a server-side apply (as KEDA's or prometheus-adapter's
installer does) and a `kubectl patch` of another APIService that helm applied."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from apiservice_operator.core.backends import Backend, backend_change, backend_of, changed_by

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> dict[str, Any]:
    return dict(json.loads((RECORDED / f"{name}.json").read_text()))


def test_a_takeover_of_a_metrics_group_is_a_warning_naming_both_backends_and_the_manager() -> None:
    before, after = recorded("metrics-apiservice-before-takeover"), recorded("metrics-apiservice-after-takeover")
    change = backend_change("v1beta1.metrics.k8s.io", backend_of(before), after)
    assert change is not None
    assert (change.event.type, change.event.reason) == ("Warning", "BackendChanged")
    assert (change.manager, change.operation) == ("keda-operator", "Apply")
    message = change.event.message
    assert message.startswith("v1beta1.metrics.k8s.io moved from Service kube-system/metrics-server:443 to "
                              "Service keda/keda-operator-metrics-apiserver:443 by keda-operator (Apply, ")
    assert "Only one backend can serve metrics.k8s.io" in message


def test_a_patched_backend_elsewhere_is_normal_and_names_the_patcher_not_the_co_owner() -> None:
    before, after = recorded("wardle-apiservice-before-patch"), recorded("wardle-apiservice-after-patch")
    change = backend_change("v1beta1.wardle.example.com", backend_of(before), after)
    assert change is not None and change.event.type == "Normal"
    # helm still owns spec.service's namespace and port, with the same timestamp: it did not move it
    assert change.manager == "kubectl-patch"
    assert "to Service kube-system/wardle-v2:443" in change.event.message
    assert "turned insecureSkipTLSVerify on" in change.event.message


def test_a_rotated_ca_bundle_alone_is_no_change_of_hands() -> None:
    before = recorded("metrics-apiservice-after-takeover")
    after = copy.deepcopy(before)
    after["spec"]["caBundle"] = "bmV3IGNh"
    assert backend_change("v1beta1.metrics.k8s.io", backend_of(before), after) is None


def test_turning_tls_verification_back_on_is_no_news_and_turning_it_off_is() -> None:
    before = recorded("wardle-apiservice-after-patch")
    after = copy.deepcopy(before)
    after["spec"]["insecureSkipTLSVerify"] = False
    assert backend_change("v1beta1.wardle.example.com", backend_of(before), after) is None
    change = backend_change("v1beta1.wardle.example.com", backend_of(after), before)
    assert change is not None
    assert "insecureSkipTLSVerify" in change.event.message and "moved" not in change.event.message


def test_a_local_apiservice_given_a_service_is_a_change_and_the_manager_may_be_unknown() -> None:
    local = {"spec": {"group": "custom.metrics.k8s.io", "version": "v1beta2"}}
    served = {"spec": {"group": "custom.metrics.k8s.io", "version": "v1beta2",
                       "service": {"namespace": "monitoring", "name": "prometheus-adapter"}}}
    assert backend_of(local) == Backend(None)
    change = backend_change("v1beta2.custom.metrics.k8s.io", backend_of(local), served)
    assert change is not None and change.event.type == "Warning" and change.manager is None
    assert "from Local (kube-apiserver itself) to Service monitoring/prometheus-adapter:443." in change.event.message


def test_no_manager_is_named_where_managed_fields_own_nothing_that_changed() -> None:
    after = recorded("metrics-apiservice-after-takeover")
    assert changed_by(after, [("caBundle",)]) == (None, None, None)


def test_explain_shows_the_last_change_of_backend() -> None:
    from apiservice_operator.plugin import render_explain

    before, after = recorded("metrics-apiservice-before-takeover"), recorded("metrics-apiservice-after-takeover")
    change = backend_change("v1beta1.metrics.k8s.io", backend_of(before), after)
    assert change is not None
    report: dict[str, Any] = {"name": "v1beta1.metrics.k8s.io",
              "apiservice": {"group": "metrics.k8s.io", "version": "v1beta1", "service": "keda/x", "port": 443,
                             "insecureSkipTLSVerify": False, "caBundle": []},
              "service": None, "endpointSlices": [], "resolution": None, "endpoints": [],
              "kubeApiserver": {"status": "True", "message": ""}, "current": [], "verdict": [], "fix": "",
              "lastBackendChange": {"event": change.event.type, "time": change.at, "message": change.event.message}}
    text = render_explain(report)
    assert f"last change of backend (Warning Event {change.at}): v1beta1.metrics.k8s.io moved from" in text
