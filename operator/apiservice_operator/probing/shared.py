"""A read shared by a whole round of checks: one request at a time for a key, joined by every check
that began waiting before it was sent, so that N checks waiting together cost one request, not N.
The path checker reads kube-apiserver's /livez this way; the clients' view (aggregated discovery,
one read of /apis per instance) is the next reader."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class SharedRead(Generic[T]):
    """Keeps only the last read sent (a new key replaces it: a rollout's new kube-apiserver addresses
    leave nothing behind). A read that failed or was cancelled is never joined: the next caller
    sends a new one (reading exception() of a cancelled future raises)."""

    clock: Callable[[], float] = field(default=lambda: asyncio.get_running_loop().time())
    _last: tuple[Hashable, float, asyncio.Future[T]] | None = None

    def read(self, key: Hashable, since: float, send: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The answer of a read of `key` sent at or after `since` (when the caller began waiting):
        the last one where it qualifies, else a new one sent now."""
        last = self._last
        if (last is None or last[0] != key or last[1] < since
                or (last[2].done() and (last[2].cancelled() or last[2].exception() is not None))):
            last = self._last = (key, self.clock(), asyncio.ensure_future(send()))
        return last[2]
