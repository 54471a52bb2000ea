"""Reads each kube-apiserver instance's aggregated discovery (`GET /apis`, v2) and `/openapi/v3`
for the clients' view (core/clientview.py): as the probe identity (every authenticated identity
may read both: system:discovery), verified against the cluster CA, one read of each per instance
shared by every check within `max_age`, revalidated with If-None-Match (kube-apiserver answers 304
for an unchanged document), the body capped (`/apis` holds every group of a CRD-heavy cluster:
megabytes). A group/version's OpenAPI document is read once per instance and URL: the URL carries
the document's hash, so a new document has a new URL. Where a view is wrong, the aggregated
server's own documents are asked directly (`ask`, the prober's), to say whose fault it is.

`;profile=nopeer` asks an instance for its own view, so the mixed-version peer proxy cannot mask an
instance (kubernetes/kubernetes#133648); an instance that does not know the profile takes the plain
v2 type listed after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from apiservice_operator.core import boundedjson
from apiservice_operator.core.clientview import (
    V2_ACCEPT,
    V2_KIND,
    ClientView,
    Document,
    Freshness,
    InstanceView,
    OpenAPI,
    ServerAnswer,
    freshness_of,
    group_versions,
    openapi_paths,
)
from apiservice_operator.core.model import ProbePlan, Target
from apiservice_operator.probing import pool
from apiservice_operator.probing.probe import USER_AGENT, ssl_context_for
from apiservice_operator.probing.shared import SharedRead

ACCEPT = f"{V2_ACCEPT};profile=nopeer, {V2_ACCEPT}"
MAX_BODY = 32 << 20  # bytes of /apis or /openapi/v3 (or one group's OpenAPI document) at most
MAX_AGE = 5.0  # seconds a read serves every check that asks for it
# seconds: a read older than this is asked again before a group/version is judged not Current. kube-apiserver
# refreshes a repaired group's entry within milliseconds of taking in its own verdict (kube-aggregator's
# discovery manager is told at once), so a read from half a second before said Stale for a group that
# had been Current for 0.4 s: our recovery lagged by that much (make bench). At most ten reads a second
# per instance, and only while a group whose endpoints and path answer is not Current.
RECHECK_AGE = 0.1
KEEP_ON_ERROR = 60.0  # seconds a good read stands in for failed ones
MAX_DOCUMENTS = 4096  # OpenAPI document answers remembered per instance
DOCUMENT_AGE = 300.0  # seconds an answered OpenAPI document stands before it is read again

# the server's own documents, asked directly at one endpoint (the prober's Prober.ask)
AskFn = Callable[[ProbePlan, Sequence[Document]], Awaitable[tuple[ServerAnswer, ...]]]


@dataclass(frozen=True)
class _Root:
    """One of an instance's root documents."""

    path: str
    accept: str
    kind: str  # what its Content-Type must say ("" for any JSON)
    parse: Callable[[Any], Any]


_APIS = _Root("/apis", ACCEPT, V2_KIND, group_versions)
_OPENAPI = _Root("/openapi/v3", "application/json", "", openapi_paths)


@dataclass
class _Read:
    parsed: Any | None  # None: could not be read
    detail: str
    etag: str
    at: float


class ClientViewReader:
    def __init__(self, ca: bytes | None, token: Callable[[], str | None], budget: float,
                 max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic,
                 ask: AskFn | None = None, on_connection: Callable[[], None] | None = None) -> None:
        self.ca = ca
        self.token = token
        self.budget = budget
        self.max_age = max_age
        self.clock = clock
        self.ask = ask
        self.on_connection = on_connection
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._last: dict[tuple[Target, str], _Read] = {}
        self._shared: dict[tuple[Target, str], SharedRead[_Read]] = {}
        # instance -> url -> (answered, detail, when)
        self._documents: dict[Target, dict[str, tuple[bool, str, float]]] = {}
        self.reads = 0  # requests sent, for tests and the benchmark

    async def view(self, instances: Sequence[Target], server_name: str, plan: ProbePlan,
                   own_resources: Sequence[str], everything: bool = False, ask: bool = True) -> ClientView:
        """`ask`: the server's own documents may be asked where the view is wrong (the caller knows
        its endpoints answer: a failing server's verdict names its own hop, and needs no more
        requests); `everything`: ask them even where the view is right (explain)."""
        self._forget_all_but(instances)
        views = await asyncio.gather(*(self._view(i, server_name, plan.group_version, own_resources)
                                       for i in instances))
        view = ClientView(tuple(views))
        wanted = tuple(Document) if everything else view.wants() if ask else ()
        if wanted and self.ask is not None:
            view = replace(view, server=await self.ask(plan, wanted))
        return view

    async def _view(self, instance: Target, server_name: str, group_version: str,
                    own_resources: Sequence[str]) -> InstanceView:
        apis, openapi = await asyncio.gather(self._read(instance, server_name, _APIS, self.max_age),
                                             self._read(instance, server_name, _OPENAPI, self.max_age))
        view = self._judge(instance, apis, group_version, own_resources)
        if view.freshness is not Freshness.CURRENT and self.clock() - apis.at > RECHECK_AGE:
            # a shared read may predate this APIService (kube-apiserver lists a new one at once) or its
            # repair: before saying it is not Current, ask again (still one request per instance at a time)
            apis = await self._read(instance, server_name, _APIS, RECHECK_AGE)
            view = self._judge(instance, apis, group_version, own_resources)
        state, detail = await self._openapi(instance, server_name, openapi, group_version)
        if state is not OpenAPI.LISTED and state is not None and self.clock() - openapi.at > RECHECK_AGE:
            openapi = await self._read(instance, server_name, _OPENAPI, RECHECK_AGE)
            state, detail = await self._openapi(instance, server_name, openapi, group_version)
        return replace(view, openapi=state, openapi_detail=detail)

    @staticmethod
    def _judge(instance: Target, read: _Read, group_version: str, own_resources: Sequence[str]) -> InstanceView:
        if read.parsed is None:
            return InstanceView(instance, None, (), read.detail)
        freshness, names = freshness_of(read.parsed, group_version, own_resources)
        return InstanceView(instance, freshness, names)

    async def _openapi(self, instance: Target, server_name: str, read: _Read,
                       group_version: str) -> tuple[OpenAPI | None, str]:
        if read.parsed is None:
            return None, read.detail
        url = read.parsed.get(group_version)
        if url is None:
            return OpenAPI.MISSING, "not in /openapi/v3"
        known = self._documents.setdefault(instance, {})
        last = known.get(url)
        if last is None or self.clock() - last[2] > DOCUMENT_AGE:
            # seldom: the URL changes with the document (its hash), and a read costs the instance a
            # fetch from the aggregated server; re-read now and then for a server that stopped serving it
            known.pop(url, None)
            known[url] = (*await self._document(instance, server_name, url), self.clock())
            while len(known) > MAX_DOCUMENTS:
                known.pop(next(iter(known)))
        answered, detail, _ = known[url]
        if not answered:
            known.pop(url, None)  # asked again next time: a failure is not cached
            return OpenAPI.FAILING, detail
        return OpenAPI.LISTED, ""

    async def _read(self, instance: Target, server_name: str, root: _Root, max_age: float) -> _Read:
        key = (instance, root.path)
        last = self._last.get(key)
        now = self.clock()
        if last is not None and now - last.at < max_age:
            return last
        shared = self._shared.setdefault(key, SharedRead(clock=self.clock))
        reading = shared.read(key, now - max_age, lambda: self._fetch(instance, server_name, root))
        return await asyncio.shield(reading)

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _fetch(self, instance: Target, server_name: str, root: _Root) -> _Read:
        last = self._last.get((instance, root.path))
        headers = self._headers(root.accept)
        if last is not None and last.etag and last.parsed is not None:
            headers["If-None-Match"] = last.etag
        self.reads += 1
        try:
            status, kind, etag, body = await self._get(instance, server_name, root.path, headers)
            if status == 304 and last is not None and last.parsed is not None:
                read = _Read(last.parsed, "", last.etag, self.clock())
            elif status != 200:
                read = _Read(None, f"HTTP {status}", "", self.clock())
            elif root.kind not in kind:
                read = _Read(None, f"not aggregated discovery (v2): {kind or 'no content type'}", "", self.clock())
            else:
                read = _Read(root.parse(boundedjson.loads(body)), "", etag, self.clock())
        except TimeoutError:
            read = _Read(None, f"timeout: no complete {root.path} within {self.budget:g}s", "", self.clock())
        except (httpx.HTTPError, OSError, boundedjson.DocumentError) as exc:
            read = _Read(None, f"{type(exc).__name__}: {str(exc)[:200]}", "", self.clock())
        if read.parsed is None and last is not None and last.parsed is not None and \
                self.clock() - last.at < KEEP_ON_ERROR:
            # one failed read of an instance says nothing of the APIServices (the path probe judges the
            # instance): the last good one stands for a while, or every verdict's message would flap
            return last
        self._last[(instance, root.path)] = read
        return read

    async def _document(self, instance: Target, server_name: str, url: str) -> tuple[bool, str]:
        """A group/version's OpenAPI document through the instance: whole, 200, within the budget."""
        self.reads += 1
        try:
            status, _, _, _ = await self._get(instance, server_name, url, self._headers("application/json"))
        except TimeoutError:
            return False, f"its document {url.split('?')[0]} did not answer whole within {self.budget:g}s"
        except (httpx.HTTPError, OSError, boundedjson.DocumentError) as exc:
            return False, f"its document {url.split('?')[0]}: {type(exc).__name__}: {str(exc)[:200]}"
        if status != 200:
            return False, f"its document {url.split('?')[0]} answered {status}"
        return True, ""

    async def _get(self, instance: Target, server_name: str, target: str,
                   headers: dict[str, str]) -> tuple[int, str, str, bytes]:
        """(status, content type, ETag, body) of one GET to an instance, within the budget, capped."""
        path, _, query = target.partition("?")
        url = httpx.URL(scheme="https", host=instance.host, port=instance.port, path=path,
                        query=query.encode() if query else None)
        async with asyncio.timeout(self.budget):
            client = self._client(server_name)
            request = client.build_request("GET", url, headers=headers, extensions={"sni_hostname": server_name})
            response = await client.send(request, stream=True)
            try:
                body = bytearray()
                if response.status_code == 200:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY:
                            raise boundedjson.DocumentError(f"{path} larger than {MAX_BODY} bytes")
                return (response.status_code, response.headers.get("content-type", ""),
                        response.headers.get("etag", ""), bytes(body))
            finally:
                await response.aclose()

    def _client(self, server_name: str) -> httpx.AsyncClient:
        client = self._clients.get(server_name)
        if client is None:
            plan = ProbePlan(targets=(), path="/apis", group_version="", server_name=server_name,
                             ca_bundle=self.ca, insecure_skip_tls_verify=False)
            transport, _ = pool.transport(ssl_context_for(plan), keep=2, on_open=self.on_connection)
            client = self._clients[server_name] = httpx.AsyncClient(
                transport=transport, follow_redirects=False, trust_env=False, timeout=httpx.Timeout(self.budget))
        return client

    def _forget_all_but(self, instances: Sequence[Target]) -> None:
        """Instances that left (a rollout's old addresses) take their cached reads with them."""
        keep = set(instances)
        for key in [k for k in self._last if k[0] not in keep]:
            self._last.pop(key, None)
            self._shared.pop(key, None)
        for gone in set(self._documents) - keep:
            self._documents.pop(gone, None)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
