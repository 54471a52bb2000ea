"""resolve(): APIService + Service + EndpointSlices -> a verdict, or a probe plan.

Table-driven like kube-aggregator's TestSync (remote_available_controller_test.go, v1.37): one row
per check of DESIGN 3, in order, with kube-aggregator's reason strings and messages.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from apiservice_operator.core.model import ProbePlan, Resolution, Status, Target, Verdict
from apiservice_operator.core.resolve import resolve
from tests.builders import CA_PEM as TEST_CA_PEM
from tests.builders import make_apiservice, make_endpoint, make_service, make_slice

Obj = dict[str, Any]

CA_PEM = TEST_CA_PEM


def _resolve(apiservice: Obj, service: Obj | None, slices: list[Obj]) -> Resolution:
    resolution = resolve(apiservice, service, slices)
    assert (resolution.verdict is None) != (resolution.plan is None), "exactly one of verdict / plan"
    return resolution


def _plan(apiservice: Obj, service: Obj | None, slices: list[Obj]) -> ProbePlan:
    resolution = _resolve(apiservice, service, slices)
    assert resolution.plan is not None, f"expected a probe plan, got {resolution.verdict}"
    return resolution.plan


def _verdict(apiservice: Obj, service: Obj | None, slices: list[Obj]) -> Verdict:
    resolution = _resolve(apiservice, service, slices)
    assert resolution.verdict is not None, f"expected a verdict, got {resolution.plan}"
    return resolution.verdict


def _ready_slice(*addresses: str, **kwargs: Any) -> Obj:
    return make_slice(endpoints=[make_endpoint(a) for a in addresses], **kwargs)


def _with_ports(endpoint_slice: Obj, ports: list[Obj]) -> Obj:
    endpoint_slice["ports"] = ports
    return endpoint_slice


def _with_external_name(service: Obj, external_name: str) -> Obj:
    service["spec"]["externalName"] = external_name
    return service


def _with_raw_ca_bundle(apiservice: Obj, raw: str) -> Obj:
    apiservice["spec"]["caBundle"] = raw
    return apiservice


UNNAMED_443 = [{"port": 443, "targetPort": 8443, "protocol": "TCP"}]
NO_PEM = b"this is not a certificate"
NOT_PRESENT = 'service/demo in "default" is not present'
NOT_LISTENING_443 = 'service/demo in "default" is not listening on port 443'
NO_SLICES = 'cannot find endpointslices for service/demo in "default"'
NO_ADDRESSES_HTTPS = 'endpointslices for service/demo in "default" have no addresses with port name "https"'
NO_ADDRESSES_UNNAMED = 'endpointslices for service/demo in "default" have no addresses with port name ""'


# (apiservice, service, slices, status, reason, message — None: not checked beyond the reason)
VERDICT_ROWS = [
    pytest.param(make_apiservice("apps", service_name=None), None, [],
                 Status.TRUE, "Local", "Local APIServices are always available",
                 id="local-apiservice-without-spec-service-is-available"),
    pytest.param(make_apiservice("apps", service_name=None), make_service(), [_ready_slice("10.0.0.1")],
                 Status.TRUE, "Local", "Local APIServices are always available",
                 id="local-apiservice-ignores-any-service-and-slices"),
    pytest.param(make_apiservice(), None, [],
                 Status.FALSE, "ServiceNotFound", NOT_PRESENT, id="service-missing"),
    pytest.param(make_apiservice(service_namespace="kube-system", service_name="metrics-server"), None, [],
                 Status.FALSE, "ServiceNotFound", 'service/metrics-server in "kube-system" is not present',
                 id="service-missing-message-names-service-and-namespace"),
    pytest.param(make_apiservice(ca_bundle=NO_PEM), None, [],
                 Status.FALSE, "ServiceNotFound", NOT_PRESENT, id="service-missing-is-checked-before-the-ca-bundle"),
    pytest.param(make_apiservice(), make_service(ports=[{"name": "https", "port": 8443, "targetPort": 8443}]),
                 [_ready_slice("10.0.0.1")],
                 Status.FALSE, "ServicePortError", NOT_LISTENING_443, id="service-port-missing"),
    pytest.param(make_apiservice(port=None), make_service(ports=[{"name": "https", "port": 8443}]),
                 [_ready_slice("10.0.0.1", port=8443)],
                 Status.FALSE, "ServicePortError", NOT_LISTENING_443,
                 id="absent-spec-service-port-defaults-to-443"),
    pytest.param(make_apiservice(port=9443), make_service(), [_ready_slice("10.0.0.1")],
                 Status.FALSE, "ServicePortError", 'service/demo in "default" is not listening on port 9443',
                 id="service-port-error-names-the-apiservice-port"),
    pytest.param(make_apiservice(), make_service(ports=[{"name": "https", "port": 8443}]), [],
                 Status.FALSE, "ServicePortError", NOT_LISTENING_443,
                 id="service-port-is-checked-before-endpointslices"),
    pytest.param(make_apiservice(), make_service(), [],
                 Status.FALSE, "EndpointsNotFound", NO_SLICES, id="no-endpointslice"),
    pytest.param(make_apiservice(ca_bundle=NO_PEM), make_service(), [],
                 Status.FALSE, "EndpointsNotFound", NO_SLICES, id="no-endpointslice-is-checked-before-the-ca-bundle"),
    pytest.param(make_apiservice(), make_service(), [make_slice(endpoints=[])],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS, id="slice-without-endpoints"),
    pytest.param(make_apiservice(), make_service(), [make_slice(endpoints=[make_endpoint("10.0.0.1", ready=False)])],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS, id="only-not-ready-endpoints"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[make_endpoint("10.0.0.1", ready=False, terminating=True)])],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS, id="only-terminating-endpoints"),
    pytest.param(make_apiservice(), make_service(), [_ready_slice("10.0.0.1", port_name="metrics")],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS, id="slice-port-with-another-name"),
    pytest.param(make_apiservice(), make_service(ports=UNNAMED_443), [_ready_slice("10.0.0.1", port_name=None)],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_UNNAMED,
                 id="unnamed-service-port-does-not-match-slice-port-without-name"),
    pytest.param(make_apiservice(), make_service(ports=UNNAMED_443), [_ready_slice("10.0.0.1", port_name="https")],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_UNNAMED,
                 id="unnamed-service-port-does-not-match-a-named-slice-port"),
    pytest.param(make_apiservice(), make_service(),
                 [_with_ports(_ready_slice("10.0.0.1"), [{"name": "https", "protocol": "TCP"}])],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS, id="slice-port-without-a-number"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(name="a", endpoints=[make_endpoint("10.0.0.1", ready=False)]),
                  _ready_slice("10.0.0.2", name="b", port_name="metrics")],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS,
                 id="ready-endpoint-and-matching-port-must-be-in-the-same-slice"),
    pytest.param(make_apiservice(ca_bundle=NO_PEM), make_service(), [make_slice(endpoints=[])],
                 Status.FALSE, "MissingEndpoints", NO_ADDRESSES_HTTPS,
                 id="missing-endpoints-is-checked-before-the-ca-bundle"),
    pytest.param(make_apiservice(ca_bundle=NO_PEM), make_service(), [_ready_slice("10.0.0.1")],
                 Status.FALSE, "InvalidCABundle", None, id="ca-bundle-that-is-not-pem"),
    pytest.param(_with_raw_ca_bundle(make_apiservice(), "%%% not base64 %%%"), make_service(),
                 [_ready_slice("10.0.0.1")],
                 Status.FALSE, "InvalidCABundle", None, id="ca-bundle-that-is-not-base64"),
    pytest.param(make_apiservice(ca_bundle=NO_PEM),
                 make_service(service_type="ExternalName", external_name="api.example.net"), [],
                 Status.FALSE, "InvalidCABundle", None, id="externalname-with-a-ca-bundle-that-is-not-pem"),
    pytest.param(make_apiservice(), _with_external_name(make_service(service_type="ExternalName"), ""), [],
                 Status.FALSE, "ServiceNotFound", 'service/demo in "default" has no externalName',
                 id="externalname-service-without-a-name"),
]


@pytest.mark.parametrize(("apiservice", "service", "slices", "status", "reason", "message"), VERDICT_ROWS)
def test_verdict_without_a_probe_uses_kube_aggregator_reason(
    apiservice: Obj, service: Obj | None, slices: list[Obj], status: Status, reason: str, message: str | None,
) -> None:
    verdict = _verdict(apiservice, service, slices)
    assert (verdict.status, verdict.reason) == (status, reason)
    if message is not None:
        assert verdict.message == message
    else:
        assert verdict.message


def test_invalid_ca_bundle_message_says_what_is_wrong() -> None:
    not_pem = _verdict(make_apiservice(ca_bundle=NO_PEM), make_service(), [_ready_slice("10.0.0.1")])
    assert "caBundle" in not_pem.message and "PEM" in not_pem.message
    not_b64 = _verdict(_with_raw_ca_bundle(make_apiservice(), "%%%"), make_service(), [_ready_slice("10.0.0.1")])
    assert "caBundle" in not_b64.message and "base64" in not_b64.message


# (apiservice, service, slices, the targets' endpoints in plan order)
TARGET_ROWS = [
    pytest.param(make_apiservice(), make_service(), [_ready_slice("10.0.0.1")], ("10.0.0.1:8443",),
                 id="one-ready-ipv4-endpoint"),
    pytest.param(make_apiservice(port=None), make_service(), [_ready_slice("10.0.0.1")], ("10.0.0.1:8443",),
                 id="absent-spec-service-port-defaults-to-443-and-matches"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[make_endpoint("10.0.0.1", ready=None)])], ("10.0.0.1:8443",),
                 id="endpoint-with-ready-unset-counts-as-ready"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[make_endpoint("10.0.0.1", ready=False),
                                        make_endpoint("10.0.0.2", ready=False, terminating=True),
                                        make_endpoint("10.0.0.3"),
                                        make_endpoint("10.0.0.4", ready=True, terminating=False)])],
                 ("10.0.0.3:8443", "10.0.0.4:8443"), id="not-ready-and-terminating-endpoints-are-excluded"),
    pytest.param(make_apiservice(), make_service(),
                 [_ready_slice("10.0.0.3", "10.0.0.1", name="demo-b"),
                  _ready_slice("10.0.0.2", "10.0.0.1", name="demo-a"),
                  _ready_slice("10.0.0.3", name="demo-c")],
                 ("10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443"),
                 id="several-slices-are-merged-deduplicated-and-sorted"),
    pytest.param(make_apiservice(), make_service(),
                 [_ready_slice("10.0.0.1", name="a"), make_slice(name="b", endpoints=[])], ("10.0.0.1:8443",),
                 id="an-empty-slice-beside-a-ready-one"),
    pytest.param(make_apiservice(), make_service(),
                 [_ready_slice("10.0.0.2", name="a", port=8443), _ready_slice("10.0.0.1", name="b", port=9443)],
                 ("10.0.0.1:9443", "10.0.0.2:8443"), id="target-port-is-taken-from-each-slice"),
    pytest.param(make_apiservice(),
                 make_service(ports=[{"name": "metrics", "port": 8080, "targetPort": 9090},
                                     {"name": "https", "port": 443, "targetPort": 8443}]),
                 [_with_ports(_ready_slice("10.0.0.1"), [{"name": "metrics", "port": 9090, "protocol": "TCP"},
                                                         {"name": "https", "port": 9443, "protocol": "TCP"}])],
                 ("10.0.0.1:9443",), id="named-port-matched-by-service-port-name-number-from-slice"),
    pytest.param(make_apiservice(port=8080),
                 make_service(ports=[{"name": "metrics", "port": 8080, "targetPort": 9090},
                                     {"name": "https", "port": 443, "targetPort": 8443}]),
                 [_with_ports(_ready_slice("10.0.0.1"), [{"name": "https", "port": 8443, "protocol": "TCP"},
                                                         {"name": "metrics", "port": 9090, "protocol": "TCP"}])],
                 ("10.0.0.1:9090",), id="apiservice-port-selects-which-service-port-name-to-match"),
    pytest.param(make_apiservice(), make_service(ports=UNNAMED_443), [_ready_slice("10.0.0.1", port_name="")],
                 ("10.0.0.1:8443",), id="unnamed-service-port-matches-slice-port-named-empty-string"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[make_endpoint("fd00::5")], address_type="IPv6")], ("[fd00::5]:8443",),
                 id="ipv6-endpoint-is-bracketed"),
    pytest.param(make_apiservice(), make_service(),
                 [_ready_slice("10.0.0.1", name="demo-v4"),
                  make_slice(name="demo-v6", endpoints=[make_endpoint("fd00::1")], address_type="IPv6")],
                 ("10.0.0.1:8443", "[fd00::1]:8443"), id="ipv4-and-ipv6-slices-of-one-service"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[{"addresses": ["10.0.0.7", "10.0.0.8"], "conditions": {"ready": True}}])],
                 ("10.0.0.7:8443",), id="an-endpoint-with-several-addresses-is-probed-at-the-first"),
    pytest.param(make_apiservice(), make_service(),
                 [make_slice(endpoints=[{"addresses": [], "conditions": {"ready": True}}, make_endpoint("10.0.0.2")])],
                 ("10.0.0.2:8443",), id="an-endpoint-without-addresses-is-skipped"),
    pytest.param(make_apiservice(), make_service(service_type="ExternalName", external_name="api.example.net"),
                 [], ("api.example.net:443",), id="externalname-is-one-target-at-the-external-name"),
    pytest.param(make_apiservice(port=8443),
                 make_service(service_type="ExternalName", external_name="api.example.net", ports=[]),
                 [], ("api.example.net:8443",),
                 id="externalname-uses-the-apiservice-port-without-port-or-endpoint-checks"),
]


@pytest.mark.parametrize(("apiservice", "service", "slices", "endpoints"), TARGET_ROWS)
def test_ready_endpoints_become_probe_targets(
    apiservice: Obj, service: Obj, slices: list[Obj], endpoints: tuple[str, ...],
) -> None:
    plan = _plan(apiservice, service, slices)
    assert tuple(t.endpoint for t in plan.targets) == endpoints


def test_ipv6_target_keeps_the_bare_address_as_host() -> None:
    plan = _plan(make_apiservice(), make_service(),
                 [make_slice(endpoints=[make_endpoint("fd00::5")], address_type="IPv6")])
    assert plan.targets == (Target("fd00::5", 8443),)


@pytest.mark.parametrize(("host", "port", "endpoint"), [
    pytest.param("10.0.0.1", 443, "10.0.0.1:443", id="ipv4"),
    pytest.param("fd00::1", 8443, "[fd00::1]:8443", id="ipv6-bracketed"),
    pytest.param("api.example.net", 443, "api.example.net:443", id="dns-name"),
])
def test_target_endpoint(host: str, port: int, endpoint: str) -> None:
    assert Target(host, port).endpoint == endpoint


@pytest.mark.parametrize(("group", "version", "path", "group_version"), [
    pytest.param("", "v1", "/api/v1", "v1", id="legacy-v1-apiservice-is-the-core-group"),
    pytest.param("demo.example.com", "v1", "/apis/demo.example.com/v1", "demo.example.com/v1", id="named-group"),
    pytest.param("metrics.k8s.io", "v1beta1", "/apis/metrics.k8s.io/v1beta1", "metrics.k8s.io/v1beta1",
                 id="named-group-beta-version"),
])
def test_discovery_path_and_group_version(group: str, version: str, path: str, group_version: str) -> None:
    plan = _plan(make_apiservice(group, version), make_service(), [_ready_slice("10.0.0.1")])
    assert (plan.path, plan.group_version) == (path, group_version)


@pytest.mark.parametrize(("service", "slices"), [
    pytest.param(make_service("kube-system", "metrics-server"),
                 [make_slice("kube-system", "metrics-server", [make_endpoint("10.0.0.9")])], id="cluster-ip"),
    pytest.param(make_service("kube-system", "metrics-server", service_type="ExternalName",
                              external_name="metrics.example.net"), [], id="externalname"),
])
def test_server_name_is_service_dns_name(service: Obj, slices: list[Obj]) -> None:
    apiservice = make_apiservice("metrics.k8s.io", "v1beta1", service_namespace="kube-system",
                                 service_name="metrics-server")
    assert _plan(apiservice, service, slices).server_name == "metrics-server.kube-system.svc"


@pytest.mark.parametrize(("ca_bundle", "insecure", "plan_ca_bundle", "plan_insecure"), [
    pytest.param(CA_PEM, False, CA_PEM, False, id="ca-bundle-decoded-from-base64"),
    pytest.param(None, False, None, False, id="neither-ca-bundle-nor-insecure"),
    pytest.param(None, True, None, True, id="insecure-skip-tls-verify"),
    pytest.param(CA_PEM, True, CA_PEM, True, id="insecure-with-a-valid-ca-bundle"),
    pytest.param(NO_PEM, True, None, True, id="ca-bundle-that-is-not-pem-is-ignored-with-insecure"),
])
def test_tls_settings_reach_the_plan(
    ca_bundle: bytes | None, insecure: bool, plan_ca_bundle: bytes | None, plan_insecure: bool,
) -> None:
    apiservice = make_apiservice(ca_bundle=ca_bundle, insecure_skip_tls_verify=insecure)
    if ca_bundle is not None:
        assert apiservice["spec"]["caBundle"] == base64.b64encode(ca_bundle).decode()  # stored as the API does
    plan = _plan(apiservice, make_service(), [_ready_slice("10.0.0.1")])
    assert (plan.ca_bundle, plan.insecure_skip_tls_verify) == (plan_ca_bundle, plan_insecure)


def test_ca_bundle_that_is_not_base64_is_ignored_with_insecure() -> None:
    apiservice = _with_raw_ca_bundle(make_apiservice(insecure_skip_tls_verify=True), "%%% not base64 %%%")
    plan = _plan(apiservice, make_service(), [_ready_slice("10.0.0.1")])
    assert (plan.ca_bundle, plan.insecure_skip_tls_verify) == (None, True)


def test_externalname_with_a_ca_bundle_that_is_not_pem_is_planned_when_insecure() -> None:
    plan = _plan(make_apiservice(ca_bundle=NO_PEM, insecure_skip_tls_verify=True),
                 make_service(service_type="ExternalName", external_name="api.example.net"), [])
    assert (plan.targets, plan.ca_bundle, plan.insecure_skip_tls_verify) == (
        (Target("api.example.net", 443),), None, True)


def test_slices_may_be_a_one_shot_iterator() -> None:
    slices = iter([_ready_slice("10.0.0.2", name="a"), _ready_slice("10.0.0.1", name="b")])
    plan = resolve(make_apiservice(), make_service(), slices).plan
    assert plan is not None
    assert plan.targets == (Target("10.0.0.1", 8443), Target("10.0.0.2", 8443))
