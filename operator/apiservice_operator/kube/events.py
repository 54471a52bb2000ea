"""One Kubernetes Event per transition, filed off the check's path and retried like client-go's
recorder does; aggregated as client-go's EventCorrelator does: the same (object, type, reason)
within the window bumps `count` on the existing Event instead of adding another, so a flapping
server cannot flood the namespace.

An Event is best effort, but a lost one is what on-call misses: client-go's recorder retries each
Event (12 tries, 10 s apart) from its own goroutine. Ours queues it (a check never waits on the
Events API), sends in order (a patch must follow its create), retries what may pass later (a
timeout, a refused connection, 429 with its Retry-After, 5xx) a few times with backoff, and files
a fresh Event where the one to bump is gone (Events expire after an hour)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.core.model import GROUP, VERSION
from apiservice_operator.core.retry import RetryPolicy
from apiservice_operator.core.transitions import EventSpec
from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)
AGGREGATION_WINDOW = 600.0  # client-go's default: 10 minutes
COMPONENT = "apiservice-operator"
MAX_MESSAGE = 1024  # events.k8s.io's note limit: the legacy API takes more, its readers show less
QUEUE_SIZE = 1000  # client-go's broadcaster queue: beyond it, new Events are dropped, never the checks slowed
TRIES = 5  # 1 + 2 + 4 + 8 s of backoff between them: an Event arrives while it is still news
RETRY_CAP = 10.0


def _rfc3339(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).replace(microsecond=0)


def short(message: str, limit: int = MAX_MESSAGE) -> str:
    """The message within `limit`, its head and its tail kept: ours end with what matters most now
    (the namespaces an outage blocks)."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    return message[: limit - tail - 1] + "…" + message[-tail:]


@dataclass(frozen=True)
class _Pending:
    name: str
    uid: str | None
    spec: EventSpec
    at: float


class _Retry(Exception):
    def __init__(self, why: str, hint: float | None = None) -> None:
        super().__init__(why)
        self.hint = hint


class EventRecorder:
    def __init__(self, credentials: Credentials, namespace: str, host: str,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.credentials = credentials
        self.namespace = namespace
        self.host = host
        self.clock = clock
        self.sleep = sleep
        self.on_outcome = on_outcome or (lambda outcome: None)
        # (apiservice, type, reason) -> (event name, count, first seen)
        self._recent: dict[tuple[str, str, str], tuple[str, int, float]] = {}
        self._expired_at = 0.0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(QUEUE_SIZE)

    async def record(self, name: str, uid: str | None, spec: EventSpec) -> None:
        """Queues the Event and returns at once; `run` files it."""
        try:
            self._queue.put_nowait(_Pending(name, uid, spec, self.clock()))
        except asyncio.QueueFull:
            self.on_outcome("dropped")
            log.warning("event dropped (%d waiting) name=%s reason=%s", QUEUE_SIZE, name, spec.reason)

    async def run(self) -> None:
        """Files the queued Events in order, each retried a few times; runs until cancelled."""
        while True:
            pending = await self._queue.get()
            await self.file(pending)

    async def file(self, pending: _Pending) -> bool:
        retry = RetryPolicy()
        for attempt in range(1, TRIES + 1):
            try:
                await self._send(pending)
                self.on_outcome("recorded")
                return True
            except _Retry as exc:
                if attempt == TRIES or self.credentials.api is None:
                    self.on_outcome("failed")
                    log.warning("event not recorded after %d tries name=%s reason=%s error=%s",
                                attempt, pending.name, pending.spec.reason, exc)
                    return False
                retry.failed(pending.name, exc.hint)
                await self.sleep(retry.delay(pending.name, RETRY_CAP) or 0.0)
            except ApiException as exc:
                # refused for good (403: our RBAC; 422: a body the API will never take)
                self.on_outcome("failed")
                log.warning("event not recorded name=%s reason=%s status=%s", pending.name,
                            pending.spec.reason, exc.status)
                return False
        return False

    async def _send(self, pending: _Pending) -> None:
        if self.credentials.api is None:
            raise _Retry("not logged in yet")
        api = client.CoreV1Api(self.credentials.api)
        spec, now = pending.spec, pending.at
        key = (pending.name, spec.type, spec.reason)
        recent = self._recent.get(key)
        try:
            if recent is not None and now - recent[2] < AGGREGATION_WINDOW:
                event_name, count, first = recent
                try:
                    await api.patch_namespaced_event(event_name, self.namespace, {
                        "count": count + 1, "lastTimestamp": _rfc3339(now).isoformat(), "message": short(spec.message)},
                        _request_timeout=API_TIMEOUT)
                    self._recent[key] = (event_name, count + 1, first)
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    # the Event to bump expired or was deleted: this one starts a new series
                    self._recent.pop(key, None)
            event_name = f"{pending.name}.{time.time_ns():x}"
            body = client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=event_name, namespace=self.namespace),
                involved_object=client.V1ObjectReference(
                    api_version=f"{GROUP}/{VERSION}", kind="APIService", name=pending.name, uid=pending.uid),
                reason=spec.reason, message=short(spec.message), type=spec.type,
                first_timestamp=_rfc3339(now), last_timestamp=_rfc3339(now), count=1,
                source=client.V1EventSource(component=COMPONENT, host=self.host),
                reporting_component=COMPONENT, reporting_instance=self.host,
            )
            await api.create_namespaced_event(self.namespace, body, _request_timeout=API_TIMEOUT)
            self._recent[key] = (event_name, 1, now)
            self._expire(now)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise _Retry(repr(exc)) from exc
        except ApiException as exc:
            if exc.status in (0, 429) or exc.status >= 500:
                raise _Retry(f"HTTP {exc.status}", _retry_after(exc)) from exc
            raise

    def _expire(self, now: float) -> None:
        # at most once a minute: a scan per new Event made thousands of transitions quadratic
        if now - self._expired_at < 60:
            return
        self._expired_at = now
        for key in [k for k, v in self._recent.items() if now - v[2] >= AGGREGATION_WINDOW]:
            del self._recent[key]


def _retry_after(exc: ApiException) -> float | None:
    headers: Any = exc.headers or {}
    try:
        return float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
