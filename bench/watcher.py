"""Timestamps every change of kube-apiserver's Available and of our Available and Degraded, from a
real watch of every APIService."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

OURS, OURS_DEGRADED, THEIRS = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded", "Available"
TRACKED = (OURS, OURS_DEGRADED, THEIRS)
ANY = "*"  # as a status to wait for: any verdict at all


def _status(obj: dict[str, Any], ctype: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status"))
    return None


def first_change(history: list[tuple[float, str | None]], status: str, after: float) -> float | None:
    """The time of the first change to `status` (ANY: to any status) at or after `after`, or None."""
    return next((t for t, s in history if t >= after and (s == status or (status == ANY and s is not None))), None)


@dataclass
class Watcher:
    server: str
    ssl_context: ssl.SSLContext
    # name -> condition type -> [(monotonic time, status)]
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
            per = self.changes.setdefault(name, {t: [] for t in TRACKED})
            for which in TRACKED:
                status = _status(obj, which)
                if not per[which] or per[which][-1][1] != status:
                    per[which].append((now, status))
            self._cond.notify_all()

    def _run(self) -> None:
        path = "/apis/apiregistration.k8s.io/v1/apiservices"
        with httpx.Client(base_url=self.server, verify=self.ssl_context, timeout=None) as client:
            rv = ""
            while not self._stop.is_set():
                try:
                    if not rv:
                        listing = client.get(path).json()
                        rv = listing["metadata"]["resourceVersion"]
                        for item in listing["items"]:
                            self._record(item, time.monotonic())
                    with client.stream("GET", path, params={"watch": "1", "resourceVersion": rv,
                                                            "timeoutSeconds": "600",
                                                            "allowWatchBookmarks": "true"}) as response:
                        for line in response.iter_lines():
                            if self._stop.is_set():
                                return
                            if not line:
                                continue
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                rv = ""
                                break
                            rv = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                self._record(event["object"], time.monotonic())
                except (httpx.HTTPError, ValueError, KeyError):
                    time.sleep(0.2)

    def wait(self, name: str, which: str, status: str, after: float, timeout: float) -> float | None:
        """Monotonic time of the first change of `which` to `status` after `after`; None on timeout."""
        return self.wait_all([name], which, status, after, time.monotonic() + timeout)[name]

    def wait_all(self, names: Iterable[str], which: str, status: str, after: float,
                 deadline: float) -> dict[str, float | None]:
        """For each name, the first change of `which` to `status` after `after`; None for those
        without one by `deadline` (monotonic). One deadline for all: at N = 1,000 a per-name
        timeout would wait N times over."""
        found: dict[str, float | None] = {}
        pending = set(names)
        while True:
            with self._cond:
                for name in list(pending):
                    t = first_change(self.changes.get(name, {}).get(which, []), status, after)
                    if t is not None:
                        found[name] = t
                        pending.discard(name)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            # the times come from the events themselves, so polling costs no accuracy; waking on every
            # event would rescan 1,000 names 1,000 times in a burst, on the cores the operator needs
            time.sleep(min(remaining, 0.1 if len(pending) < 20 else 0.5))
        return {**found, **dict.fromkeys(pending)}

    def current(self, name: str, which: str) -> str | None:
        with self._cond:
            history = self.changes.get(name, {}).get(which, [])
            return history[-1][1] if history else None
