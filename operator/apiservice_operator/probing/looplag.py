"""LoopLag: how long this process's event loop has been held up, added up.

A probe's latency is timed on our event loop: when the loop is busy (a start-up with 1,000
APIServices, a burst of watch events), an answer that came back in milliseconds waits in the
socket until the loop gets to it, and the server is blamed for our queue (make bench: 572 of
1,000 first verdicts were SlowDiscovery while the operator used a whole core). A ticker that
should wake every TICK seconds adds up how late it wakes; a probe's latency is then taken less
the lag that built up while it ran. Where the server and our loop were slow at once, that errs on
the side of not blaming the server.
"""

from __future__ import annotations

import asyncio
import contextlib

TICK = 0.1  # seconds: stalls shorter than this do not make a server look slow anyway
NOISE = 0.002  # lateness below this is the scheduler's, not a stall


class LoopLag:
    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self.total = 0.0  # seconds
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        """The lag so far; starts the ticker on first use, in the loop that uses it."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop-lag")
        return self.total

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick)
            late = loop.time() - before - self.tick
            if late > NOISE:
                self.total += late

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
