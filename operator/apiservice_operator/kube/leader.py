"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it:
expiry is judged by when *we* last saw the record change (local clock), never by comparing our
clock with the holder's renewTime. kopf has no Lease support (DESIGN 8)."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)


def _now_micro() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class LeaderElector:
    credentials: Credentials
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    on_change: Callable[[bool], None] = lambda leading: None
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    not_leading: asyncio.Event = field(default_factory=asyncio.Event)
    _observed: tuple[object, ...] | None = None
    _observed_at: float = 0.0
    _last_renew: float = 0.0

    def __post_init__(self) -> None:
        self.not_leading.set()

    def _api(self) -> client.CoordinationV1Api:
        assert self.credentials.api is not None
        return client.CoordinationV1Api(self.credentials.api)

    def _set_leading(self, value: bool) -> None:
        if value != self.leading.is_set():
            if value:
                self.leading.set()
                self.not_leading.clear()
            else:
                self.leading.clear()
                self.not_leading.set()
            log.info("leadership %s lease=%s/%s identity=%s", "acquired" if value else "lost",
                     self.namespace, self.name, self.identity)
            self.on_change(value)

    def license(self) -> float:
        """Seconds this replica may still act as the leader: until its renew deadline passes since
        the last renewal (0 when it is not leading). A standby may take the Lease lease_duration after
        it last saw it renewed, so work that starts within this and ends within lease_duration -
        renew_deadline lands before any standby can lead (supervisor.write_timeout)."""
        if not self.leading.is_set():
            return 0.0
        return max(0.0, self.renew_deadline - (asyncio.get_running_loop().time() - self._last_renew))

    def _attempt_budget(self) -> float:
        # a leader's attempt may take only what is left before its renew deadline: one that hangs
        # on a frozen connection must not keep it leading (it would keep writing beside a new leader)
        return max(0.1, self.license()) if self.leading.is_set() else self.renew_deadline

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._attempt_budget()):
                        ok = await self._try_acquire_or_renew()
                except TimeoutError:
                    log.warning("lease %s/%s: no answer from kube-apiserver in time", self.namespace, self.name)
                    ok = False
                except ApiException as exc:
                    log.warning("lease %s/%s: HTTP %s", self.namespace, self.name, exc.status)
                    ok = False
                except Exception as exc:  # the API may be away for a while; keep trying
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    ok = False
                if ok:
                    self._last_renew = loop.time()
                    self._set_leading(True)
                elif self.leading.is_set() and loop.time() - self._last_renew >= self.renew_deadline:
                    self._set_leading(False)  # could not renew in time: another may take over
                await asyncio.sleep(self.retry_period)
        finally:
            if self.leading.is_set():
                await asyncio.shield(self._release())
                self._set_leading(False)

    async def _try_acquire_or_renew(self) -> bool:
        loop = asyncio.get_running_loop()
        api = self._api()
        now = _now_micro()
        try:
            lease = await api.read_namespaced_lease(self.name, self.namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(holder_identity=self.identity,
                                        lease_duration_seconds=int(self.lease_duration),
                                        acquire_time=now, renew_time=now, lease_transitions=0))
            try:
                await api.create_namespaced_lease(self.namespace, body, _request_timeout=API_TIMEOUT)
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False  # someone else created it first
                raise
            return True

        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        if record != self._observed:
            self._observed, self._observed_at = record, loop.time()
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.lease_duration
        if holder and holder != self.identity and loop.time() - self._observed_at < duration:
            return False  # held by a live leader
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        lease.spec = client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=int(self.lease_duration),
            acquire_time=spec.acquire_time if holder == self.identity else now,
            renew_time=now, lease_transitions=transitions)
        try:
            # resourceVersion in the body makes this a compare-and-swap: two standbys cannot both win
            await api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _release(self) -> None:
        """On a clean shutdown hand over at once instead of after lease_duration."""
        try:
            async with asyncio.timeout(API_TIMEOUT):
                await self._hand_over()
        except Exception as exc:  # best effort: the lease expires anyway
            log.warning("lease release failed: %r", exc)

    async def _hand_over(self) -> None:
        api = self._api()
        lease = await api.read_namespaced_lease(self.name, self.namespace, _request_timeout=API_TIMEOUT)
        if lease.spec and lease.spec.holder_identity == self.identity:
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            await api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=API_TIMEOUT)
            log.info("lease released lease=%s/%s", self.namespace, self.name)
