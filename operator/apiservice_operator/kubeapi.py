"""Our own API access: credentials (shared with kopf through on.login) and the status writer.

kubernetes_asyncio loads any kubeconfig (exec plugins, OIDC, in-cluster bound tokens that
rotate); kopf's built-in kubeconfig reader handles only static credentials. One Configuration
feeds kopf's watches and our server-side-apply writes; probes carry the probe identity's token
(identity.py), never this one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.model import Condition

FIELD_MANAGER = "apiservice-operator"
GROUP, VERSION, PLURAL = "apiregistration.k8s.io", "v1", "apiservices"

log = logging.getLogger(__name__)


class Credentials:
    """Loads the client configuration once per (re-)login; the token is kopf's and ours, never a probe's."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig
        self.configuration: client.Configuration | None = None
        self.api: client.ApiClient | None = None
        self.token: str | None = None
        self._logins = 0

    async def load(self) -> client.Configuration:
        configuration = client.Configuration()
        if self.kubeconfig:
            await config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        old, self.api = self.api, client.ApiClient(configuration)
        # kubernetes_asyncio's session trusts the environment: it then reads ~/.netrc and the proxy
        # variables on every request (2-4 % of the operator's CPU at start-up, make bench). kopf's own
        # session does not trust them either, so both reach kube-apiserver alike.
        self.api.rest_client.pool_manager._trust_env = False
        self.configuration = configuration
        if old is not None:
            # requests may still be under way on the old client: retire it later, not now
            asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old.close()))
        await self.refresh_token()
        return configuration

    async def refresh_token(self) -> str | None:
        if self.configuration is None:
            return None
        value = await self.configuration.get_api_key_with_prefix("BearerToken")
        if value and value.lower().startswith("bearer "):
            value = value[7:]
        self.token = value or None
        return self.token

    async def connection_info(self) -> kopf.ConnectionInfo:
        """For kopf's on.login. Its first login reuses what run() loaded; a later one means kopf
        got a 401 (an expired or rotated token): then credentials are loaded afresh."""
        self._logins += 1
        configuration = self.configuration if self._logins == 1 and self.configuration else await self.load()
        return kopf.ConnectionInfo(
            server=str(configuration.host),
            ca_path=configuration.ssl_ca_cert or None,
            insecure=not configuration.verify_ssl,
            certificate_path=configuration.cert_file or None,
            private_key_path=configuration.key_file or None,
            scheme="Bearer" if self.token else None,
            token=self.token,
        )

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None


def status_body(name: str, conditions: Sequence[Condition]) -> dict[str, Any]:
    """Only our condition types: server-side apply then leaves kube-apiserver's `Available` alone
    (status.conditions is a map keyed by `type`)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "APIService", "metadata": {"name": name},
        "status": {"conditions": [c.to_api() for c in conditions]},
    }


class WriteForbidden(RuntimeError):
    pass


async def write_conditions(credentials: Credentials, name: str, conditions: Sequence[Condition]) -> bool:
    """Server-side apply on apiservices/<name>/status. False when the APIService is gone."""
    if credentials.api is None:
        raise RuntimeError("not logged in")
    api = client.CustomObjectsApi(credentials.api)
    try:
        await api.patch_cluster_custom_object_status(
            GROUP, VERSION, PLURAL, name, status_body(name, conditions),
            field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml",  # type: ignore[call-arg]
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        if exc.status == 403:
            raise WriteForbidden(
                f"forbidden: cannot patch apiservices/status ({name}): the operator's RBAC needs "
                f"verb=patch on resource=apiservices/status in {GROUP}") from exc
        raise
    return True
