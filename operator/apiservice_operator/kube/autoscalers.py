"""The HorizontalPodAutoscalers a failing metrics API stalls, listed on demand. No watch: HPAs are
read only while a metrics APIService (core/consumers.py) is not Available, at most once per
LIST_EVERY whatever the number of such APIServices, so that the cost follows the APIServices and a
cluster whose metrics APIs work pays nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apiservice_operator.core.consumers import CONDITION, stalled_autoscalers
from apiservice_operator.core.model import Obj
from apiservice_operator.kube.client import API_TIMEOUT, Credentials, get_json

log = logging.getLogger(__name__)
PATH = "/apis/autoscaling/v2/horizontalpodautoscalers"
# the HPA controller re-evaluates each HPA every 15 s: a list younger than this says nothing newer
LIST_EVERY = 10.0
KEEP_ON_ERROR = 60.0  # a failed list keeps the last one this long, then names none
PAGE = 500

Fetch = Callable[[list[tuple[str, str]]], Awaitable[dict[str, Any]]]


def project(hpa: Obj) -> Obj:
    """What naming a stalled HPA needs: its name and ScalingActive condition (a list of 5,000 HPAs
    is kept as a few hundred KiB)."""
    meta = hpa.get("metadata") or {}
    conditions = [c for c in (hpa.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION]
    return {"metadata": {"namespace": meta.get("namespace"), "name": meta.get("name")},
            "status": {"conditions": conditions}}


class AutoscalerReader:
    def __init__(self, credentials: Credentials | None = None, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch or self._get
        self._credentials = credentials
        self._clock = clock
        self._items: list[Obj] = []
        self._at = -float("inf")  # when the held list was taken
        self._tried = -float("inf")  # when a list was last tried
        self._lock = asyncio.Lock()
        self.lists = 0
        self.problem: str | None = None  # why the last list failed

    async def stalled(self, group: str, service_host: str | None) -> list[str]:
        """namespace/name of each HPA that `group`'s outage stalls; [] when unknown."""
        return stalled_autoscalers(await self._current(), group, service_host)

    async def _current(self) -> list[Obj]:
        async with self._lock:  # the checks of three metrics APIs at once share one list
            now = self._clock()
            if now - self._tried >= LIST_EVERY:
                self._tried = now
                try:
                    async with asyncio.timeout(API_TIMEOUT):
                        self._items = await self._list()
                    self._at, self.problem = now, None
                except Exception as exc:  # a verdict never waits on this: it names fewer HPAs
                    if self.problem is None:
                        log.warning("listing HorizontalPodAutoscalers failed: %r", exc)
                    self.problem = repr(exc)
            return self._items if now - self._at < KEEP_ON_ERROR else []

    async def _list(self) -> list[Obj]:
        self.lists += 1
        items: list[Obj] = []
        token = ""
        while True:
            page = await self._fetch([("limit", str(PAGE))] + ([("continue", token)] if token else []))
            items += [project(h) for h in page.get("items") or []]
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def _get(self, query: list[tuple[str, str]]) -> dict[str, Any]:
        if self._credentials is None:
            raise RuntimeError("not logged in")
        return dict(await get_json(self._credentials, PATH, query))
