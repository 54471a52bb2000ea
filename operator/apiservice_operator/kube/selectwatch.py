"""SelectiveWatch: list and watch one resource through server-side selections that change at run time.

kopf reads a watch's selector only when it (re)connects, then resumes from its last resourceVersion without
listing (issue 26): an object that starts matching never arrives, one that stops matching never leaves. So
each selection here, a scope (namespace or None, label selector, field selector), is a list and watch of its
own, started and stopped as the set changes. As client-go's reflector, a scope lists once, watches from the
list's resourceVersion with bookmarks and lists again only when that is too old (410 Gone), diffing the
relist against the store (kopf's keeps what went, resync.py). An object is gone when no scope holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from apiservice_operator.core.model import Obj
from apiservice_operator.core.retry import RetryPolicy
from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)

Scope = tuple[str | None, str, str]  # namespace (None: all), labelSelector, fieldSelector ("": none)
Key = tuple[str | None, str]  # namespace (None: cluster-scoped), name
Change = tuple[Key, Obj | None]  # None: gone
Project = Callable[[Obj], Obj | None]  # what to keep of an object; None: not wanted, as if it did not match
OnChange = Callable[[str, str | None, str, Obj | None], None]  # watch name, namespace, name, object or None

PAGE_SIZE = 500
SERVER_TIMEOUT = 300.0  # up to a fifth more at random, so scopes started together do not reconnect together
CLIENT_MARGIN = 30.0  # beyond the server's own end of a watch: only a dead connection reaches it
DEBOUNCE = 0.2  # a start beside 1,000 APIServices changes the scopes 1,000 times in a few seconds
DEBOUNCE_MAX = 2.0  # a steady trickle of changes still applies this often
HANDOVER = 15.0  # the longest a replaced scope keeps watching while its successor has not listed
BACKOFF_CAP = 30.0
MIN_WATCH = 1.0  # seconds: a silent watch that ended sooner counts as a failure
LIST_RESTARTS = 3  # a continue token that expired again and again: the list is too slow for compaction


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"


def plan(running: Collection[Scope], wanted: Collection[Scope]) -> tuple[set[Scope], set[Scope]]:
    """The scopes to start and to stop; unchanged ones keep their watch (and skip a relist)."""
    return set(wanted) - set(running), set(running) - set(wanted)


def request_params(scope: Scope, **extra: str) -> dict[str, str]:
    _, labels, fields = scope
    params = {"labelSelector": labels, "fieldSelector": fields, **extra}
    return {k: v for k, v in params.items() if v}


def key_of(obj: Obj) -> tuple[Key, int]:
    """Its key, and its resourceVersion as a number (an etcd revision, which apimachinery's
    util/resourceversion compares as numbers), else -1."""
    meta = obj.get("metadata") or {}
    version = str(meta.get("resourceVersion"))
    return (meta.get("namespace") or None, str(meta["name"])), int(version) if version.isdigit() else -1


class Store:
    """The objects the scopes hold, merged: one projected value per key (the newest seen by any scope)
    and, per scope, only its keys; a key leaves the merged view when the last scope holding it lets go."""

    def __init__(self) -> None:
        self.merged: dict[Key, Obj] = {}
        self.scopes: dict[Scope, set[Key]] = {}
        self._versions: dict[Key, int] = {}
        self._holders: dict[Key, int] = {}

    def put(self, scope: Scope, key: Key, obj: Obj, version: int = -1) -> bool:
        """True when the merged view changed; a copy older than one another scope got meanwhile is not kept."""
        keys = self.scopes.setdefault(scope, set())
        if key not in keys:
            keys.add(key)
            self._holders[key] = self._holders.get(key, 0) + 1
        held = self._versions.get(key, -1)
        if 0 <= version < held:
            return False
        self._versions[key] = version
        if key in self.merged and self.merged[key] == obj:
            return False
        self.merged[key] = obj
        return True

    def drop(self, scope: Scope, key: Key) -> bool:
        """True when the object left the merged view (no other scope holds it)."""
        if key not in self.scopes.get(scope, ()):
            return False
        self.scopes[scope].discard(key)
        self._holders[key] -= 1
        if self._holders[key]:
            return False
        del self._holders[key]
        self._versions.pop(key, None)
        return self.merged.pop(key, None) is not None

    def replace(self, scope: Scope, listed: dict[Key, tuple[int, Obj]]) -> list[Change]:
        """A scope's (re)list: what it added or changed, and what it held that the list lacks."""
        changes: list[Change] = [(key, obj) for key, (version, obj) in listed.items()
                                 if self.put(scope, key, obj, version)]
        held = self.scopes.setdefault(scope, set())
        return changes + [(key, None) for key in list(held - listed.keys()) if self.drop(scope, key)]

    def remove_scope(self, scope: Scope) -> list[Change]:
        gone: list[Change] = [(key, None) for key in list(self.scopes.get(scope, ())) if self.drop(scope, key)]
        self.scopes.pop(scope, None)
        return gone


class _Expired(Exception):
    """410 Gone: the resourceVersion (or a list's continue token) is older than etcd keeps."""


class _Failed(Exception):
    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.retry_after = retry_after


def _raise_for(response: httpx.Response) -> None:
    if response.status_code == 410:
        raise _Expired()
    if not response.is_success:
        hint = response.headers.get("retry-after", "")  # API Priority and Fairness' 429 says when
        raise _Failed(response.status_code, response.text[:300], float(hint) if hint.isdigit() else None)


class SelectiveWatch:
    """One resource, the union of its scopes. `run()` until cancelled; `set_scopes()` any time.
    `ready` is set while every current scope has listed once (it clears while new scopes list)."""

    def __init__(self, resource: Resource, credentials: Credentials, on_change: OnChange, *, name: str,
                 project: Project = lambda obj: obj, debounce: float = DEBOUNCE, page_size: int = PAGE_SIZE,
                 server_timeout: float = SERVER_TIMEOUT, backoff_cap: float = BACKOFF_CAP) -> None:
        self.resource, self.credentials, self.on_change, self.name = resource, credentials, on_change, name
        self.project, self.debounce, self.page_size = project, debounce, page_size
        self.server_timeout, self.backoff_cap = server_timeout, backoff_cap
        self.store = Store()
        self.ready = asyncio.Event()
        # for the caller's metrics: objects off the wire (list items, watch events), requests made
        self.received = self.bookmarks = self.lists = self.watch_requests = 0
        self._desired: frozenset[Scope] | None = None  # None: not told yet, so not ready either
        self._changed = asyncio.Event()
        self._tasks: dict[Scope, asyncio.Task[None]] = {}
        self._listed: dict[Scope, asyncio.Event] = {}
        self._retry = RetryPolicy()

    def set_scopes(self, scopes: Iterable[Scope]) -> None:
        wanted = frozenset(scopes)
        if not self.resource.namespaced and any(namespace for namespace, _, _ in wanted):
            raise ValueError(f"{self.name} is cluster-scoped: its scopes take no namespace")
        if wanted != self._desired:
            self._desired = wanted
            self._changed.set()
            self._update_ready()

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.store.merged.get((namespace, name))

    def listed(self) -> set[Scope]:  # the running scopes that have listed once: their objects are known
        return {scope for scope, done in self._listed.items() if done.is_set()}

    async def run(self) -> None:
        try:
            while True:
                start, stop = plan(self._tasks, await self._settled())
                for scope in start:
                    self._listed[scope] = asyncio.Event()
                    self._tasks[scope] = asyncio.create_task(self._follow(scope), name=f"{self.name} {scope}")
                if start and stop:
                    await self._handover(start)
                for scope in stop:
                    await self._stop(scope)
                self._update_ready()
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _settled(self) -> frozenset[Scope]:
        """The wanted set once changes pause for `debounce` (or after DEBOUNCE_MAX of steady changes)."""
        await self._changed.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(DEBOUNCE_MAX, self.debounce)
        while (left := deadline - loop.time()) > 0:
            self._changed.clear()
            try:
                async with asyncio.timeout(min(self.debounce, left)):
                    await self._changed.wait()
            except TimeoutError:
                break
        self._changed.clear()
        return self._desired or frozenset()

    async def _handover(self, start: Iterable[Scope]) -> None:
        """A selector that grew ('in (a,b)' became 'in (a,b,c)') is a new scope replacing the old one:
        the old one goes once the new one has listed, else what both hold would flap gone and back."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDOVER):
                for scope in start:
                    await self._listed[scope].wait()

    async def _stop(self, scope: Scope) -> None:
        task = self._tasks.pop(scope)
        self._listed.pop(scope, None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._retry.forget(scope)
        self._report(self.store.remove_scope(scope))

    def _update_ready(self) -> None:
        synced = (self._desired is not None and self._desired == set(self._tasks)
                  and all(listed.is_set() for listed in self._listed.values()))
        (self.ready.set if synced else self.ready.clear)()

    def _report(self, changes: Iterable[Change]) -> None:
        for (namespace, name), obj in changes:
            try:
                self.on_change(self.name, namespace, name, obj)
            except Exception:
                log.exception("%s: on_change failed for %s/%s", self.name, namespace, name)

    async def _follow(self, scope: Scope) -> None:
        version: str | None = None  # None: list first
        while True:
            try:
                if version is None:
                    version = await self._list(scope)
                    self._listed[scope].set()
                    self._update_ready()
                version = await self._watch(scope, version)
            except _Expired:
                log.info("%s scope=%s: resourceVersion %s expired, listing again", self.name, scope, version)
                version = None
            except Exception as exc:
                # a bad event line (ValueError), or a bug: what followed cannot be trusted until a relist
                expected = isinstance(exc, httpx.HTTPError | OSError | TimeoutError | _Failed)
                version = version if expected else None
                self._retry.failed(scope, exc.retry_after if isinstance(exc, _Failed) else None)
                delay = self._retry.delay(scope, self.backoff_cap) or 0.0
                log.warning("%s scope=%s: %s, again in %.1fs", self.name, scope, repr(exc)[:300], delay,
                            exc_info=not expected and not isinstance(exc, ValueError))
                await asyncio.sleep(delay)

    async def _session(self) -> tuple[httpx.AsyncClient, dict[str, Any]]:
        """Read per request, as write_conditions does: a re-login replaces the client, the token renews."""
        http, configuration = self.credentials.http, self.credentials.configuration
        if http is None or configuration is None:
            raise _Failed(None, "not logged in")
        headers = {"Accept": "application/json"}
        if token := await self.credentials.refresh_token():
            headers["Authorization"] = f"Bearer {token}"
        server_name = configuration.tls_server_name
        return http, {"headers": headers, "extensions": {"sni_hostname": server_name} if server_name else None}

    async def _list(self, scope: Scope) -> str:
        """A consistent list, page by page; a continue token that expired starts it over."""
        self.lists += 1
        listed: dict[Key, tuple[int, Obj]] = {}
        token, restarts = "", 0
        while True:
            http, request = await self._session()
            params = request_params(scope, limit=str(self.page_size), **{"continue": token})
            async with asyncio.timeout(API_TIMEOUT):
                response = await http.get(self.resource.path(scope[0]), params=params, **request)
            try:
                _raise_for(response)
            except _Expired:
                if not token or restarts >= LIST_RESTARTS:
                    raise _Failed(410, "list expired") from None
                token, restarts, listed = "", restarts + 1, {}
                continue
            page = response.json()
            for item in page.get("items") or []:
                self.received += 1
                if (projected := self.project(item)) is not None:
                    key, number = key_of(item)
                    listed[key] = number, projected
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                self._retry.succeeded(scope)
                self._report(self.store.replace(scope, listed))
                return str(meta.get("resourceVersion") or "")

    async def _watch(self, scope: Scope, version: str) -> str:
        """One watch request from `version`; returns the last version seen, to resume from."""
        self.watch_requests += 1
        timeout = int(self.server_timeout * (1 + random.random() / 5))
        http, request = await self._session()
        params = request_params(scope, watch="1", allowWatchBookmarks="true", timeoutSeconds=str(timeout),
                                resourceVersion=version)
        lines, started = 0, asyncio.get_running_loop().time()
        async with asyncio.timeout(timeout + CLIENT_MARGIN), http.stream(
                "GET", self.resource.path(scope[0]), params=params, **request,
                timeout=httpx.Timeout(API_TIMEOUT, read=timeout + CLIENT_MARGIN)) as response:
            if not response.is_success:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                if line.strip():
                    lines += 1
                    if lines == 1:
                        self._retry.succeeded(scope)
                    version = self._apply(scope, line, version)
        if not lines and asyncio.get_running_loop().time() - started < MIN_WATCH:
            # a healthy watch ends at timeoutSeconds; this is a proxy or a server going away: not in a tight loop
            raise _Failed(None, "the watch ended at once")
        return version

    def _apply(self, scope: Scope, line: str, version: str) -> str:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            meta = obj.get("metadata") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{exc!r} in {line[:200]!r}") from None
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise _Failed(obj.get("code"), str(obj.get("message")))
        if kind == "BOOKMARK":
            self.bookmarks += 1
            return str(meta.get("resourceVersion") or version)
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not meta.get("name"):
            raise ValueError(f"not a watch event: {line[:200]!r}")
        self.received += 1
        key, number = key_of(obj)
        projected = None if kind == "DELETED" else self.project(obj)
        if self.store.drop(scope, key) if projected is None else self.store.put(scope, key, projected, number):
            self._report([(key, projected)])
        return str(meta.get("resourceVersion") or version)
