"""give_back: hand memory this process has freed back to the OS (glibc's malloc_trim).

A start beside 1,000 APIServices is a burst: hundreds of TLS connections at once (probes, path
probes through kube-apiserver, status writes), every object kopf lists parsed. When it is over that
memory is free inside glibc's heap but still counted in RSS: glibc shrinks the heap only from its
top, and a few live blocks above the freed ones pin it. Measured (N = 1,000, make bench's setup):
RSS 118 MiB before the burst, 176 MiB after it and for good; malloc_trim gave back 13 MiB. RSS is
what a memory limit counts, so the operator trims once a minute (a few milliseconds).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging

INTERVAL = 60.0

log = logging.getLogger(__name__)


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_TRIM = _malloc_trim()


def available() -> bool:
    """glibc has malloc_trim; other C libraries (musl) may not, and then nothing is done."""
    return _TRIM is not None


def give_back() -> bool:
    """True when some memory went back to the OS."""
    return _TRIM is not None and bool(_TRIM(0))


async def give_back_every(interval: float = INTERVAL) -> None:
    if _TRIM is None:
        log.debug("no malloc_trim in this C library: freed memory stays with the allocator")
        return
    while True:
        await asyncio.sleep(interval)
        give_back()
