"""The pace of our status writes to kube-apiserver: at most --max-write-rate a second, and when
kube-apiserver throttles or fails them (429 with Retry-After from API Priority and Fairness, 5xx, no
answer) every write waits out one backoff (the retry policy, the hint honoured) and only one write
at a time goes until one lands. Without it, 1,000 failing writes were each retried a second later:
~1,000 requests a second at a kube-apiserver that had just said it was overloaded.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from apiservice_operator.core.model import WriteDeferred, WriteFailed
from apiservice_operator.core.retry import RetryPolicy

T = TypeVar("T")
log = logging.getLogger(__name__)
KEY = "kube-apiserver"
# the longest wait between trial writes while kube-apiserver keeps refusing: after the throttling
# ends, every held verdict lands within about this
MAX_BACKOFF = 15.0


@dataclass
class WriteGate:
    rate: float  # writes per second at most, in bursts of up to one second's worth
    clock: Callable[[], float] = field(default=lambda: asyncio.get_running_loop().time())
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    license: Callable[[], float] = lambda: math.inf  # seconds this replica may still write (its Lease)
    _tokens: float | None = None
    _filled_at: float = 0.0
    _open_at: float = 0.0  # no write before this (a backoff after a refusal)
    _trial: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: int = 0  # write requests sent through the gate
    refused: int = 0  # of them, refused or unanswered

    @property
    def throttled(self) -> bool:
        return self.retry.failures(KEY) > 0

    async def send(self, write: Callable[[], Awaitable[T]]) -> T:
        """The write's result; WriteDeferred, without a request, while kube-apiserver throttles us and
        either the backoff has not passed or another write is the trial. The caller's check ends
        there instead of holding its APIService (its probes keep their pace, the verdict is
        recomputed when the write can go)."""
        await self._take_token()
        if self.license() <= 0:
            # the Lease was not renewed within its renew deadline: a standby may lead soon, and a write
            # from here could land after its first
            raise WriteDeferred("not writing: this replica's Lease is past its renew deadline")
        if self.throttled:
            wait = self._open_at - self.clock()
            if wait > 0 or self._trial.locked():
                raise WriteDeferred(f"kube-apiserver refuses status writes; the next try in {max(wait, 0):.1f}s",
                                    retry_after=wait if wait > 0 else None)
            async with self._trial:
                return await self._attempt(write)
        return await self._attempt(write)

    async def _attempt(self, write: Callable[[], Awaitable[T]]) -> T:
        self.sent += 1
        try:
            result = await write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.refused += 1
            if not self.throttled:
                log.warning("status writes refused (%s): backing off, one write at a time until one lands", exc)
            self.retry.failed(KEY, exc.retry_after if isinstance(exc, WriteFailed) else None)
            self._open_at = self.clock() + (self.retry.delay(KEY, MAX_BACKOFF) or 0.0)
            raise
        if self.throttled:
            log.info("status writes land again")
        self.retry.succeeded(KEY)
        self._open_at = 0.0
        return result

    async def _take_token(self) -> None:
        while True:
            now = self.clock()
            if self._tokens is None:
                self._tokens, self._filled_at = self.rate, now
            self._tokens = min(self.rate, self._tokens + (now - self._filled_at) * self.rate)
            self._filled_at = now
            if self._tokens >= 1 - 1e-6:  # float sums of elapsed time fall just short of whole tokens
                self._tokens -= 1
                return
            await asyncio.sleep(max(0.001, (1 - self._tokens) / self.rate))
