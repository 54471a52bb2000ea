"""One Kubernetes Event per transition, aggregated as client-go's EventCorrelator does: the same
(object, type, reason) within the window bumps `count` on the existing Event instead of adding
another, so a flapping server cannot flood the namespace."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.core.model import GROUP, VERSION
from apiservice_operator.core.transitions import EventSpec
from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)
AGGREGATION_WINDOW = 600.0  # client-go's default: 10 minutes
COMPONENT = "apiservice-operator"


def _rfc3339(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).replace(microsecond=0)


class EventRecorder:
    def __init__(self, credentials: Credentials, namespace: str, host: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.namespace = namespace
        self.host = host
        self.clock = clock
        # (apiservice, type, reason) -> (event name, count, first seen)
        self._recent: dict[tuple[str, str, str], tuple[str, int, float]] = {}
        self._expired_at = 0.0

    async def record(self, name: str, uid: str | None, spec: EventSpec) -> None:
        if self.credentials.api is None:
            return
        api = client.CoreV1Api(self.credentials.api)
        now = self.clock()
        key = (name, spec.type, spec.reason)
        recent = self._recent.get(key)
        try:
            if recent is not None and now - recent[2] < AGGREGATION_WINDOW:
                event_name, count, first = recent
                await api.patch_namespaced_event(event_name, self.namespace, {
                    "count": count + 1, "lastTimestamp": _rfc3339(now).isoformat(), "message": spec.message},
                    _request_timeout=API_TIMEOUT)
                self._recent[key] = (event_name, count + 1, first)
                return
            event_name = f"{name}.{time.time_ns():x}"
            body = client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=event_name, namespace=self.namespace),
                involved_object=client.V1ObjectReference(
                    api_version=f"{GROUP}/{VERSION}", kind="APIService", name=name, uid=uid),
                reason=spec.reason, message=spec.message[:1024], type=spec.type,
                first_timestamp=_rfc3339(now), last_timestamp=_rfc3339(now), count=1,
                source=client.V1EventSource(component=COMPONENT, host=self.host),
                reporting_component=COMPONENT, reporting_instance=self.host,
            )
            await api.create_namespaced_event(self.namespace, body, _request_timeout=API_TIMEOUT)
            self._recent[key] = (event_name, 1, now)
            self._expire(now)
        except (TimeoutError, OSError) as exc:
            log.warning("event not recorded name=%s reason=%s error=%r", name, spec.reason, exc)
        except ApiException as exc:
            # an event is best effort: never let it block or break the status write
            if recent is not None and exc.status == 404:
                self._recent.pop(key, None)
            log.warning("event not recorded name=%s reason=%s status=%s", name, spec.reason, exc.status)

    def _expire(self, now: float) -> None:
        # at most once a minute: a scan per new Event made thousands of transitions quadratic
        if now - self._expired_at < 60:
            return
        self._expired_at = now
        for key in [k for k, v in self._recent.items() if now - v[2] >= AGGREGATION_WINDOW]:
            del self._recent[key]
