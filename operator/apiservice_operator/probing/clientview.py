"""Reads each kube-apiserver instance's aggregated discovery (`GET /apis`, v2) for the clients' view
(core/clientview.py): as the probe identity (every authenticated identity may read it:
system:discovery), verified against the cluster CA, one read per instance shared by every check
within `max_age`, revalidated with If-None-Match (kube-apiserver answers 304 for an unchanged
`/apis`), the body capped (it holds every group of a CRD-heavy cluster: megabytes).

`;profile=nopeer` asks an instance for its own view, so the mixed-version peer proxy cannot mask an
instance (kubernetes/kubernetes#133648); an instance that does not know the profile takes the plain
v2 type listed after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from apiservice_operator.core import boundedjson
from apiservice_operator.core.clientview import (
    V2_ACCEPT,
    ClientView,
    Freshness,
    InstanceView,
    freshness_of,
    group_versions,
)
from apiservice_operator.core.model import ProbePlan, Target
from apiservice_operator.probing import pool
from apiservice_operator.probing.probe import USER_AGENT, ssl_context_for
from apiservice_operator.probing.shared import SharedRead

ACCEPT = f"{V2_ACCEPT};profile=nopeer, {V2_ACCEPT}"
MAX_BODY = 32 << 20  # bytes of /apis at most
MAX_AGE = 5.0  # seconds a read serves every check that asks for it
RECHECK_AGE = 0.5  # seconds: a read older than this is asked again before a group/version is judged not Current

Listed = dict[str, tuple[str, tuple[str, ...]]]


@dataclass
class _Read:
    listed: Listed | None  # None: could not be read
    detail: str
    etag: str
    at: float


class ClientViewReader:
    def __init__(self, ca: bytes | None, token: Callable[[], str | None], budget: float,
                 max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.ca = ca
        self.token = token
        self.budget = budget
        self.max_age = max_age
        self.clock = clock
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._last: dict[Target, _Read] = {}
        self._shared: dict[Target, SharedRead[_Read]] = {}
        self.reads = 0  # requests sent, for tests and the benchmark

    async def view(self, instances: Sequence[Target], server_name: str, group_version: str,
                   own_resources: Sequence[str]) -> ClientView:
        self._forget_all_but(instances)
        views = await asyncio.gather(*(self._view(i, server_name, group_version, own_resources) for i in instances))
        return ClientView(tuple(views))

    async def _view(self, instance: Target, server_name: str, group_version: str,
                    own_resources: Sequence[str]) -> InstanceView:
        read = await self._read(instance, server_name, self.max_age)
        view = self._judge(instance, read, group_version, own_resources)
        if view.freshness is not Freshness.CURRENT and self.clock() - read.at > RECHECK_AGE:
            # a shared read may predate this APIService (kube-apiserver lists a new one at once) or its
            # repair: before saying it is not Current, ask again (still one request per instance at a time)
            read = await self._read(instance, server_name, RECHECK_AGE)
            view = self._judge(instance, read, group_version, own_resources)
        return view

    @staticmethod
    def _judge(instance: Target, read: _Read, group_version: str, own_resources: Sequence[str]) -> InstanceView:
        if read.listed is None:
            return InstanceView(instance, None, (), read.detail)
        freshness, names = freshness_of(read.listed, group_version, own_resources)
        return InstanceView(instance, freshness, names)

    async def _read(self, instance: Target, server_name: str, max_age: float) -> _Read:
        last = self._last.get(instance)
        now = self.clock()
        if last is not None and now - last.at < max_age:
            return last
        shared = self._shared.setdefault(instance, SharedRead(clock=self.clock))
        reading = shared.read(instance, now - max_age, lambda: self._fetch(instance, server_name))
        return await asyncio.shield(reading)

    async def _fetch(self, instance: Target, server_name: str) -> _Read:
        last = self._last.get(instance)
        headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if last is not None and last.etag and last.listed is not None:
            headers["If-None-Match"] = last.etag
        url = httpx.URL(scheme="https", host=instance.host, port=instance.port, path="/apis")
        self.reads += 1
        try:
            async with asyncio.timeout(self.budget):
                client = self._client(server_name)
                request = client.build_request("GET", url, headers=headers, extensions={"sni_hostname": server_name})
                response = await client.send(request, stream=True)
                try:
                    if response.status_code == 304 and last is not None and last.listed is not None:
                        read = _Read(last.listed, "", last.etag, self.clock())
                    elif response.status_code != 200:
                        read = _Read(None, f"HTTP {response.status_code}", "", self.clock())
                    elif "as=APIGroupDiscoveryList" not in (kind := response.headers.get("content-type", "")):
                        read = _Read(None, f"not aggregated discovery (v2): {kind or 'no content type'}", "",
                                     self.clock())
                    else:
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_BODY:
                                raise boundedjson.DocumentError(f"/apis larger than {MAX_BODY} bytes")
                        read = _Read(group_versions(boundedjson.loads(bytes(body))), "",
                                     response.headers.get("etag", ""), self.clock())
                finally:
                    await response.aclose()
        except TimeoutError:
            read = _Read(None, f"timeout: no complete /apis within {self.budget:g}s", "", self.clock())
        except (httpx.HTTPError, OSError, boundedjson.DocumentError) as exc:
            read = _Read(None, f"{type(exc).__name__}: {str(exc)[:200]}", "", self.clock())
        self._last[instance] = read
        return read

    def _client(self, server_name: str) -> httpx.AsyncClient:
        client = self._clients.get(server_name)
        if client is None:
            plan = ProbePlan(targets=(), path="/apis", group_version="", server_name=server_name,
                             ca_bundle=self.ca, insecure_skip_tls_verify=False)
            transport, _ = pool.transport(ssl_context_for(plan), keep=2)
            client = self._clients[server_name] = httpx.AsyncClient(
                transport=transport, follow_redirects=False, trust_env=False, timeout=httpx.Timeout(self.budget))
        return client

    def _forget_all_but(self, instances: Sequence[Target]) -> None:
        """Instances that left (a rollout's old addresses) take their cached reads with them."""
        for gone in set(self._last) - set(instances):
            self._last.pop(gone, None)
            self._shared.pop(gone, None)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
