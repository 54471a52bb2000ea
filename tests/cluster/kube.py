"""A small synchronous client for the real kube-apiserver, for test set-up and assertions."""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


class Kube:
    def __init__(self, server: str, ssl_context: ssl.SSLContext | None = None, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server, verify=ssl_context or True, headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def _check(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.text, what)
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params=params), f"GET {path}")

    def get_or_none(self, path: str) -> Any:
        resp = self.http.get(path)
        if resp.status_code == 404:
            return None
        return self._check(resp, f"GET {path}")

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.http.post(path, json=body), f"POST {path}")

    def replace(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.http.put(path, json=body), f"PUT {path}")

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(
            self.http.patch(path, content=json.dumps(body),
                            headers={"Content-Type": "application/merge-patch+json"}),
            f"PATCH {path}",
        )

    def apply(self, path: str, body: dict[str, Any], manager: str = "tests", force: bool = True) -> Any:
        params = {"fieldManager": manager, "force": "true" if force else "false"}
        return self._check(
            self.http.patch(path, content=json.dumps(body), params=params,
                            headers={"Content-Type": "application/apply-patch+yaml"}),
            f"APPLY {path}",
        )

    def delete(self, path: str) -> None:
        resp = self.http.delete(path)
        if resp.status_code not in (200, 202, 404):
            self._check(resp, f"DELETE {path}")

    # --- paths ------------------------------------------------------------------------------------
    @staticmethod
    def apiservice_path(name: str = "") -> str:
        return "/apis/apiregistration.k8s.io/v1/apiservices" + (f"/{name}" if name else "")

    @staticmethod
    def service_path(namespace: str, name: str = "") -> str:
        return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")

    @staticmethod
    def slice_path(namespace: str, name: str = "") -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices" + (f"/{name}" if name else "")

    def apiservice(self, name: str) -> Any:
        return self.get(self.apiservice_path(name))


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
             tolerate: tuple[type[Exception], ...] = (ApiError,)) -> Any:
    """Polls until predicate returns something truthy; fails with the last value seen. Errors of the
    `tolerate` kinds count as not yet (add httpx.TransportError to wait out a restarting API)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except tolerate as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


class HasAPIService(Protocol):
    @property
    def name(self) -> str: ...

    def apiservice(self) -> dict[str, Any]: ...


def wait_conditions(api: HasAPIService, want: dict[str, tuple[str, str]], timeout: float,
                    messages: dict[str, str] | None = None,
                    tolerate: tuple[type[Exception], ...] = (ApiError,)) -> dict[str, Any]:
    """Waits until every condition type in `want` has (status, reason) and the message of each type
    in `messages` matches its regex; returns them all. `tolerate` as in wait_for."""

    def found() -> dict[str, Any]:
        obj = api.apiservice()
        return {t: condition(obj, t) for t in want}

    def check() -> dict[str, Any] | None:
        now = found()
        ok = all(c is not None and (c["status"], c.get("reason")) == want[t] for t, c in now.items())
        for ctype, regex in (messages or {}).items():
            ok = ok and bool(re.search(regex, (now.get(ctype) or {}).get("message", "")))
        return now if ok else None

    what = f"{api.name}: {want}" + (f" messages~{messages!r}" if messages else "")
    try:
        return wait_for(check, timeout, what, interval=0.1, tolerate=tolerate)
    except AssertionError as exc:
        try:
            now: Any = found()
        except tolerate as error:  # the API itself may be what is down
            now = error
        raise AssertionError(f"{exc}\nnow: {now!r}") from None
