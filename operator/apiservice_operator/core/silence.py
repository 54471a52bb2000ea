"""Silence: which endpoints have answered nothing for a whole budget, judged per endpoint.

Many APIServices often share one server. When it hangs, each of their probes would wait out its
own budget, one batch of --concurrency after another (make bench: 1,000 APIServices behind one
hung server, 329 of them flipped within 60 s). An endpoint that has answered none of the requests
sent to it during a whole budget, while one is still open, is judged at once for the next: the
open one keeps asking for all of them, and the first answer of any kind ends the silence. Where
none is open, the next is sent and keeps asking, but its check is judged at once too.

Pure bookkeeping: the prober tells it when a probe starts and how it ended; times are the
caller's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiservice_operator.core.model import Target


@dataclass
class _Seen:
    open: int = 0  # probes sent to it and not ended
    answered_at: float = float("-inf")  # when anything last came back: a response, a refusal, a reset
    silent_since: float | None = None  # a probe started then and got nothing back within its budget


class Silence:
    def __init__(self) -> None:
        self._seen: dict[Target, _Seen] = {}

    def start(self, target: Target, now: float) -> bool:
        """False: send the probe (it is counted open). True: judge it without sending, a timeout:
        the endpoint is silent and a probe already open to it will say when that ends. The prober
        words that timeout as it words one waited out, so that the verdict's message stays put."""
        seen = self._seen.setdefault(target, _Seen())
        if seen.silent_since is not None and seen.open > 0:
            return True
        seen.open += 1
        return False

    def end(self, target: Target, started: float, now: float, answered: bool | None) -> None:
        """A probe sent at `started` ended: with some answer (True), with none within its budget
        (False), or abandoned before either (None: a newer check replaced it)."""
        seen = self._seen.get(target)
        if seen is None:
            return
        seen.open = max(0, seen.open - 1)
        if answered:
            seen.answered_at = now
            seen.silent_since = None
        elif answered is False and seen.answered_at < started and seen.silent_since is None:
            seen.silent_since = started
        if seen.open == 0 and seen.silent_since is None:
            del self._seen[target]  # only silent endpoints and those with open probes are kept

    def silent(self, target: Target) -> bool:
        """Whether it has answered nothing for a whole budget. Asked after start() said send, too:
        that probe then keeps asking for every check behind it, and the check that sent it is judged
        now, as the others are, rather than wait out its budget (a mass hang's last flip waited 5 s)."""
        seen = self._seen.get(target)
        return seen is not None and seen.silent_since is not None
