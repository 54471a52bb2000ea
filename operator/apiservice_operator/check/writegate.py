"""The pace of our status writes to kube-apiserver: up to --max-write-burst stored up at rest, then
at most --max-write-rate a second (a token bucket), and when kube-apiserver throttles or fails them
(429 with Retry-After from API Priority and Fairness, 5xx, no answer) every write waits out one
backoff (the retry policy, the hint honoured), then writes go one at a time again and the number in
flight doubles with each that lands (TCP's slow start): a kube-apiserver that serves one of our
writes at a time is asked about that many, not 64 at once the moment one lands. Without it, 1,000
failing writes were each retried a second later: ~1,000 requests a second at a kube-apiserver that
had just said it was overloaded.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from apiservice_operator.core.model import WRITES_IN_FLIGHT, WriteDeferred, WriteFailed
from apiservice_operator.core.retry import RetryPolicy

T = TypeVar("T")
log = logging.getLogger(__name__)
KEY = "kube-apiserver"
# the longest wait between trial writes while kube-apiserver keeps refusing: after the throttling
# ends, every held verdict lands within about this
MAX_BACKOFF = 15.0


@dataclass
class WriteGate:
    rate: float  # writes per second at most, after `burst`
    burst: int = 0  # writes stored up at rest (0: one second's worth)
    clock: Callable[[], float] = field(default=lambda: asyncio.get_running_loop().time())
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    license: Callable[[], float] = lambda: math.inf  # seconds this replica may still write (its Lease)
    _tokens: float | None = None
    _filled_at: float = 0.0
    most: int = WRITES_IN_FLIGHT  # writes in flight at most, when kube-apiserver takes them
    _open_at: float = 0.0  # no write before this (a backoff after a refusal)
    _window: float = float(WRITES_IN_FLIGHT)  # writes in flight allowed now: 1 after a refusal, doubling
    _in_flight: int = 0
    sent: int = 0  # write requests sent through the gate
    refused: int = 0  # of them, refused or unanswered

    @property
    def throttled(self) -> bool:
        return self._window < self.most

    async def send(self, write: Callable[[], Awaitable[T]]) -> T:
        """The write's result; WriteDeferred, without a request, while this replica may not write (its
        Lease), the backoff after a refusal has not passed, or the writes allowed in flight are
        under way. The caller's check ends there instead of holding its APIService (its probes keep
        their pace, the verdict is recomputed when the write can go)."""
        await self._take_token()
        if self.license() <= 0:
            # the Lease was not renewed within its renew deadline: a standby may lead soon, and a write
            # from here could land after its first
            raise WriteDeferred("not writing: this replica's Lease is past its renew deadline")
        wait = self._open_at - self.clock()
        if wait > 0 or self._in_flight >= self._window:
            raise WriteDeferred(f"kube-apiserver refuses status writes; the next try in {max(wait, 0):.1f}s",
                                retry_after=wait if wait > 0 else None)
        self._in_flight += 1
        try:
            return await self._attempt(write)
        finally:
            self._in_flight -= 1

    async def _attempt(self, write: Callable[[], Awaitable[T]]) -> T:
        self.sent += 1
        try:
            result = await write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.refused += 1
            if not self.throttled:
                log.warning("status writes refused (%s): backing off, then one write at a time", exc)
            self.retry.failed(KEY, exc.retry_after if isinstance(exc, WriteFailed) else None)
            self._open_at = self.clock() + (self.retry.delay(KEY, MAX_BACKOFF) or 0.0)
            self._window = 1.0
            raise
        self.retry.succeeded(KEY)
        if self.throttled:
            self._window = min(float(self.most), self._window * 2)
            if not self.throttled:
                log.info("status writes land again at full pace")
        return result

    async def _take_token(self) -> None:
        while True:
            now = self.clock()
            most = float(self.burst) if self.burst > 0 else self.rate
            if self._tokens is None:
                self._tokens, self._filled_at = most, now
            self._tokens = min(most, self._tokens + (now - self._filled_at) * self.rate)
            self._filled_at = now
            if self._tokens >= 1 - 1e-6:  # float sums of elapsed time fall just short of whole tokens
                self._tokens -= 1
                return
            await asyncio.sleep(max(0.001, (1 - self._tokens) / self.rate))
