"""The user's path (DESIGN 9) on the real control plane, the operator running as its ServiceAccount:
what a request through kube-apiserver gets decides, and the reason names the hop that breaks.
Outages kube-apiserver's own check cannot see are asserted against what a user really gets."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.cluster.controlplane import ControlPlane
from tests.cluster.harness import ALL_SERVERS, AggregatedAPI
from tests.cluster.kube import Kube, condition, wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.cluster.sampleapiserver import API_VERSION, GROUP, SampleAPIServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS, OURS_DEGRADED, THEIRS = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", "Available"
OURS_TIMEOUT = 30
THEIRS_TIMEOUT = 120
PROBE_IDENTITY = "system:serviceaccount:apiservice-operator:apiservice-operator-probe"


@pytest.fixture
def healthy_api(aggregated_api: Callable[..., AggregatedAPI], operator: OperatorProcess) -> AggregatedAPI:
    api: AggregatedAPI = aggregated_api(1)
    api.register_service()
    api.write_slice()
    api.register_apiservice()
    wait_conditions(api, {OURS: ("True", "Passed"), THEIRS: ("True", "Passed")}, OURS_TIMEOUT)
    return api


def user_discovery(control_plane: ControlPlane, api: AggregatedAPI | _SampleAPI, token: str) -> tuple[int, str]:
    """What an ordinary user gets for the API's discovery document through kube-apiserver."""
    user = Kube(control_plane.server, _ca_only(control_plane), token=token)
    try:
        resp = user.http.get(f"/apis/{api.group}/{api.version}")
        return resp.status_code, resp.text
    finally:
        user.close()


def _ca_only(cp: ControlPlane) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(cp.ca_path))


@pytest.fixture(scope="module")
def user_token(control_plane: ControlPlane) -> str:
    """An ordinary user: a ServiceAccount with no binding (all it may do is what everyone may)."""
    control_plane.kubectl("create", "namespace", "userpath-users", check=False)
    control_plane.kubectl("create", "serviceaccount", "someone", "-n", "userpath-users", check=False)
    return control_plane.kubectl("create", "token", "someone", "-n", "userpath-users").stdout.strip()


def test_front_proxy_not_trusted_marks_unavailable_naming_the_trust(
    healthy_api: AggregatedAPI, control_plane: ControlPlane, user_token: str,
) -> None:
    healthy_api.set_state(mode="healthy", auth="front-proxy-untrusted")
    found = wait_conditions(healthy_api, {OURS: ("False", "FrontProxyNotTrusted"),
                                          THEIRS: ("False", "FailedDiscoveryCheck")}, THEIRS_TIMEOUT)
    assert "requestheader client CA" in found[OURS]["message"], found
    assert "403" in found[THEIRS]["message"], found
    status, _ = user_discovery(control_plane, healthy_api, user_token)
    assert status == 503  # what users get, and why ours is not True
    healthy_api.set_state(mode="healthy")
    wait_conditions(healthy_api, {OURS: ("True", "Passed"), THEIRS: ("True", "Passed")}, THEIRS_TIMEOUT)


def test_server_that_serves_only_system_masters_marks_unavailable_where_kube_apiserver_says_passed(
    healthy_api: AggregatedAPI, control_plane: ControlPlane, user_token: str,
) -> None:
    healthy_api.set_state(mode="healthy", auth="masters-only")
    found = wait_conditions(healthy_api, {OURS: ("False", "UsersRefused")}, OURS_TIMEOUT,
                            messages={OURS: "subjectaccessreviews.*system:auth-delegator"})
    status, body = user_discovery(control_plane, healthy_api, user_token)
    assert status == 500 and "subjectaccessreviews" in body, (status, body)
    # kube-apiserver's own check calls as system:masters: it keeps saying Passed (its blind spot)
    theirs = condition(healthy_api.apiservice(), THEIRS)
    assert theirs is not None and (theirs["status"], theirs["reason"]) == ("True", "Passed"), (theirs, found)
    healthy_api.set_state(mode="healthy")
    wait_conditions(healthy_api, {OURS: ("True", "Passed")}, OURS_TIMEOUT)


@pytest.fixture
def discovery_binding_removed(control_plane: ControlPlane) -> Iterator[None]:
    """kube-apiserver's RBAC then lets no ordinary identity read discovery, the probe identity included."""
    saved = json.loads(control_plane.kubectl("get", "clusterrolebinding", "system:discovery", "-o", "json").stdout)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        saved["metadata"].pop(key, None)
    control_plane.kubectl("delete", "clusterrolebinding", "system:discovery")
    try:
        yield
    finally:
        control_plane.kubectl("create", "-f", "-", stdin=json.dumps(saved))


def test_probe_identity_denied_by_kube_apiserver_rbac_is_unknown_naming_the_grant(
    healthy_api: AggregatedAPI, discovery_binding_removed: None,
) -> None:
    found = wait_conditions(healthy_api, {OURS: ("Unknown", "ProbeUnauthorized")}, OURS_TIMEOUT,
                            messages={OURS: "RBAC does not let the probe identity apiservice-operator/"
                                            "apiservice-operator-probe get"})
    assert "system:discovery" in found[OURS]["message"]


# --- security: run last (see tests/conftest.py), over every request any test server received ------
def _jwt_claims(token: str, public_key: rsa.RSAPublicKey | None) -> dict[str, Any]:
    """The claims of a ServiceAccount token, its RS256 signature verified with the cluster's key
    (None: read only)."""
    header, payload, signature = token.split(".")

    def unb64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    if public_key is not None:
        public_key.verify(unb64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    claims: dict[str, Any] = json.loads(unb64(payload))
    return claims


@pytest.mark.run_last
def test_every_token_sent_to_an_aggregated_server_can_do_nothing_beyond_discovery(
    control_plane: ControlPlane, operator_kubeconfig: Path,
) -> None:
    import yaml

    operator_token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    tokens: set[str] = set()
    requests = 0
    for server in ALL_SERVERS:
        for record in server.requests():
            value = record.get("authorization")
            if value:
                requests += 1
                assert value.startswith("Bearer "), value[:20]
                tokens.add(value[len("Bearer "):])
    assert tokens, "no test server received a token: the check would prove nothing"
    assert operator_token not in tokens, "the operator's own token reached an aggregated server"
    key = serialization.load_pem_public_key((control_plane.workdir / "pki" / "sa.pub").read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    # other control planes of the session (two instances, e2e's own) sign with keys of their own;
    # the same manifests hold there, so their tokens must name the same identity
    ours, elsewhere, foreign = set(), set(), 0
    for token in tokens:
        try:
            ours.add(_jwt_claims(token, key)["sub"])
        except InvalidSignature:
            foreign += 1
            elsewhere.add(_jwt_claims(token, None)["sub"])
    assert ours == {PROBE_IDENTITY} and elsewhere <= {PROBE_IDENTITY}, (ours, elsewhere)
    for verb, resource in (("list", "services"), ("list", "endpointslices.discovery.k8s.io"),
                           ("patch", "apiservices.apiregistration.k8s.io/status"), ("create", "events"),
                           ("get", "secrets"), ("list", "pods"), ("create", "serviceaccounts/token")):
        answer = control_plane.kubectl("auth", "can-i", verb, resource, "--all-namespaces",
                                       f"--as={PROBE_IDENTITY}", check=False)
        assert answer.stdout.strip() == "no", (verb, resource, answer.stdout, answer.stderr)
    allowed = control_plane.kubectl("auth", "can-i", "get", "/apis/example.com/v1", f"--as={PROBE_IDENTITY}",
                                    check=False)
    assert allowed.stdout.strip() == "yes"  # discovery, as for every authenticated identity
    print(f"\nsecurity: {requests} requests with a token to {len(ALL_SERVERS)} test servers; {len(tokens)} distinct "
          f"tokens ({len(tokens) - foreign} verified with this control plane's key), every one for "
          f"{PROBE_IDENTITY}, which may do nothing but discovery")


# --- a real extension API server nobody here wrote (DESIGN 9) -----------------------------------
def test_sample_apiserver_refusing_users_is_unavailable_while_kube_apiserver_says_passed(
    sample_apiserver: SampleAPIServer, operator: OperatorProcess, control_plane: ControlPlane, user_token: str,
) -> None:
    api = _SampleAPI(sample_apiserver)
    wait_conditions(api, {OURS: ("True", "Passed"), THEIRS: ("True", "Passed")}, OURS_TIMEOUT)
    sample_apiserver.delete_auth_delegator_binding()
    try:
        # its SubjectAccessReviews are forbidden now (cached allowances last 10 s)
        found = wait_conditions(api, {OURS: ("False", "UsersRefused")}, 90,
                                messages={OURS: "subjectaccessreviews.*is forbidden.*system:auth-delegator"})
        theirs = condition(api.apiservice(), THEIRS)
        assert theirs is not None and (theirs["status"], theirs["reason"]) == ("True", "Passed"), (theirs, found)
        status, body = user_discovery(control_plane, api, user_token)
        assert status == 500 and "subjectaccessreviews" in body, (status, body)
    finally:
        sample_apiserver.restore_auth_delegator_binding()
    wait_conditions(api, {OURS: ("True", "Passed"), THEIRS: ("True", "Passed")}, 90)


class _SampleAPI:
    """The sample-apiserver's APIService in the shape the waits and user_discovery read."""

    def __init__(self, server: SampleAPIServer) -> None:
        self.server = server
        self.group, self.version = GROUP, API_VERSION

    @property
    def name(self) -> str:
        return self.server.apiservice_name

    def apiservice(self) -> dict[str, Any]:
        return self.server.apiservice()
