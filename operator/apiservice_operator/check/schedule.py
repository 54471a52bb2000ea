"""A queue that holds each APIService at most once, each with the earliest time it is due."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable

_RESOLUTION = 0.001  # seconds


class ProbeQueue:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._due: dict[str, tuple[float, bool]] = {}  # name -> (when, urgent)
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, name: object) -> bool:
        return name in self._due

    def schedule(self, name: str, delay: float, *, urgent: bool) -> None:
        """Due in `delay` seconds, or earlier if already due earlier. Urgent (a change was seen)
        sticks until the entry is taken, so a later periodic schedule cannot downgrade it."""
        when = self._clock() + delay
        current = self._due.get(name)
        if current is not None:
            when = min(when, current[0])
            urgent = urgent or current[1]
            if (when, urgent) == current:
                return
        self._due[name] = (when, urgent)
        heapq.heappush(self._heap, (when, next(self._seq), name))
        self._changed.set()

    def forget(self, name: str) -> None:
        self._due.pop(name, None)  # its heap entries are skipped as stale when popped

    async def take(self) -> list[tuple[str, bool]]:
        """Waits until at least one entry is due; returns all due entries as (name, urgent)."""
        while True:
            now = self._clock()
            taken: list[tuple[str, bool]] = []
            # what is due within the clock's resolution is due now, as asyncio's own timers: otherwise a
            # wake-up a hair early (a rounding clock) waits again for nothing, over and over
            while self._heap and self._heap[0][0] <= now + _RESOLUTION:
                when, _, name = heapq.heappop(self._heap)
                current = self._due.get(name)
                if current is None or current[0] != when:
                    continue  # stale: forgotten or rescheduled
                del self._due[name]
                taken.append((name, current[1]))
            if taken:
                return taken
            self._changed.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands in the same
            # loop iteration as the change (CPython gh-86296), and the probe loop then never stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
