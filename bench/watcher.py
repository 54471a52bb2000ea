"""Timestamps every change of kube-apiserver's and our Available status, from a real watch."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

OURS, THEIRS = "apiservice-operator.io/Available", "Available"


def _status(obj: dict[str, Any], ctype: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status"))
    return None


@dataclass
class Watcher:
    server: str
    ssl_context: ssl.SSLContext
    # name -> which -> [(monotonic time, status)]
    changes: dict[str, dict[str, list[tuple[float, str | None]]]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watcher:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _record(self, obj: dict[str, Any], now: float) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        with self._cond:
            per = self.changes.setdefault(name, {OURS: [], THEIRS: []})
            for which in (OURS, THEIRS):
                status = _status(obj, which)
                if not per[which] or per[which][-1][1] != status:
                    per[which].append((now, status))
            self._cond.notify_all()

    def _run(self) -> None:
        path = "/apis/apiregistration.k8s.io/v1/apiservices"
        with httpx.Client(base_url=self.server, verify=self.ssl_context, timeout=None) as client:
            rv = ""
            while not self._stop.is_set():
                if not rv:
                    listing = client.get(path).json()
                    rv = listing["metadata"]["resourceVersion"]
                    for item in listing["items"]:
                        self._record(item, time.monotonic())
                try:
                    with client.stream("GET", path, params={"watch": "1", "resourceVersion": rv,
                                                            "timeoutSeconds": "600"}) as response:
                        for line in response.iter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                rv = ""
                                break
                            rv = event["object"]["metadata"]["resourceVersion"]
                            self._record(event["object"], time.monotonic())
                except httpx.HTTPError:
                    time.sleep(0.2)

    def wait(self, name: str, which: str, status: str, after: float, timeout: float) -> float | None:
        """Monotonic time of the first change of `which` to `status` after `after`; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, s in self.changes.get(name, {}).get(which, []):
                    if t >= after and s == status:
                        return t
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 1.0))

    def current(self, name: str, which: str) -> str | None:
        with self._cond:
            history = self.changes.get(name, {}).get(which, [])
            return history[-1][1] if history else None
