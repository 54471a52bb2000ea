"""Our own API access: credentials (shared with kopf through on.login) and the status writer.

kubernetes_asyncio loads any kubeconfig (exec plugins, OIDC, in-cluster bound tokens that
rotate); kopf's built-in kubeconfig reader handles only static credentials. One Configuration
feeds kopf's watches, kubernetes_asyncio's client (events, leases, tokens) and our status writes;
probes carry the probe identity's token (identity.py), never this one.

Status writes go through httpx on the probes' connection pool (pool.py), not kubernetes_asyncio's
client: the first verdicts at a start are up to 64 writes at once, and its aiohttp client kept a TLS
connection for each with asyncio's 256 KiB SSL buffer apiece (pool.py's cost ~70 KiB), and its
(de)serialization was most of write_conditions' 18 % of the CPU of a start beside 1,000 APIServices
(make bench). HTTP/1.1 on purpose: httpcore's HTTP/2 does not reset a stream closed early
(encode/httpcore#943), so one cancelled write would leave the shared connection's flow-control
window short for good.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import httpx
from kubernetes_asyncio import client, config

from apiservice_operator.core.model import (
    FIELD_MANAGER,
    GROUP,
    PLURAL,
    VERSION,
    WRITES_IN_FLIGHT,
    Condition,
    WriteFailed,
    WriteForbidden,
)
from apiservice_operator.probing import pool

# Every request to kube-apiserver has a deadline (kubernetes_asyncio's default has none at all: a call
# on a frozen connection waited forever, a Lease renewal among them).
API_TIMEOUT = 10.0
# a status write's whole deadline where no Lease bounds it tighter (run/supervisor.write_deadline)
WRITE_TIMEOUT = 10.0

log = logging.getLogger(__name__)


class Credentials:
    """Loads the client configuration once per (re-)login; the token is kopf's and ours, never a probe's."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig
        self.configuration: client.Configuration | None = None
        self.api: client.ApiClient | None = None
        self.http: httpx.AsyncClient | None = None  # for status writes
        self.http_pool: pool.ConnectionPool | None = None
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
        old_http, (self.http, self.http_pool) = self.http, writer_client(configuration)
        self.configuration = configuration
        if old is not None:
            # requests may still be under way on the old clients: retire them later, not now
            asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old.close()))
        if old_http is not None:
            asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old_http.aclose()))
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

    async def login(self) -> client.Configuration:
        """For kopf's on.login (the adapter turns it into kopf's ConnectionInfo). Its first login
        reuses what run() loaded; a later one means kopf got a 401 (an expired or rotated token):
        then credentials are loaded afresh."""
        self._logins += 1
        if self._logins == 1 and self.configuration is not None:
            return self.configuration
        return await self.load()

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None
        if self.http is not None:
            await self.http.aclose()
            self.http = None


async def get_json(credentials: Credentials, path: str, query: list[tuple[str, str]] | None = None,
                   accept: str = "application/json") -> Any:
    """One GET through the operator's API client, the body parsed as JSON without kubernetes_asyncio's
    model classes (a page of 500 objects would be built twice)."""
    if credentials.api is None:
        raise RuntimeError("not logged in")
    response = await credentials.api.call_api(
        path, "GET", query_params=query or [], header_params={"Accept": accept},
        auth_settings=["BearerToken"], _preload_content=False, _request_timeout=API_TIMEOUT)
    response = response[0] if isinstance(response, tuple) else response
    return json.loads(await response.read())


def writer_client(configuration: client.Configuration) -> tuple[httpx.AsyncClient, pool.ConnectionPool | None]:
    """The connection facts kopf's watches get too (server, CA, client certificate, verification),
    plus the kubeconfig's tls-server-name and proxy-url; the bearer token goes per request."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    timeout = httpx.Timeout(WRITE_TIMEOUT)
    if configuration.proxy:
        # pool.py connects directly; httpx's own pool knows proxies
        return httpx.AsyncClient(base_url=str(configuration.host), verify=context, trust_env=False,
                                 proxy=configuration.proxy, timeout=timeout), None
    transport, connections = pool.transport(context, keep=WRITES_IN_FLIGHT)
    return httpx.AsyncClient(base_url=str(configuration.host), transport=transport, trust_env=False,
                             timeout=timeout), connections


def status_body(name: str, conditions: Sequence[Condition]) -> dict[str, Any]:
    """Only our condition types: server-side apply then leaves kube-apiserver's `Available` alone
    (status.conditions is a map keyed by `type`)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "APIService", "metadata": {"name": name},
        "status": {"conditions": [c.to_api() for c in conditions]},
    }


async def write_conditions(credentials: Credentials, name: str, conditions: Sequence[Condition],
                           within: float = WRITE_TIMEOUT) -> str | None:
    """Server-side apply on apiservices/<name>/status, all within `within` seconds (httpx's own
    timeouts are per phase): the resourceVersion of the object written ("" if the answer had none),
    None when the APIService is gone."""
    if credentials.http is None or credentials.configuration is None:
        raise RuntimeError("not logged in")
    headers = {"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"}
    token = await credentials.refresh_token()  # exec plugins and rotated token files renew it here
    if token:
        headers["Authorization"] = f"Bearer {token}"
    server_name = credentials.configuration.tls_server_name
    async with asyncio.timeout(within):
        response = await credentials.http.patch(
            f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}/status",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content=json.dumps(status_body(name, conditions)).encode(), headers=headers,
            extensions={"sni_hostname": server_name} if server_name else None)
    if response.status_code == 404:
        return None
    if response.status_code == 403:
        raise WriteForbidden(
            f"forbidden: cannot patch apiservices/status ({name}): the operator's RBAC needs "
            f"verb=patch on resource=apiservices/status in {GROUP}")
    if not response.is_success:
        raise WriteFailed(f"HTTP {response.status_code}: {_status_message(response)}", _retry_after(response))
    return _resource_version(response)


def _resource_version(response: httpx.Response) -> str:
    try:
        meta = response.json().get("metadata") or {}
    except (ValueError, AttributeError):
        return ""
    return str(meta.get("resourceVersion") or "")


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (API Priority and Fairness sends it with 429); an HTTP date is not
    something kube-apiserver sends, and is ignored."""
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _status_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.text[:300])
    except ValueError:
        return response.text[:300]
