"""heap.give_back: memory freed below a live block goes back to the OS only when trimmed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apiservice_operator.run import heap

# in a fresh process: 200 MiB of 2 KB blocks (glibc's heap, not Python's small-object arenas), one
# block kept above them, the rest freed; RSS after the free, then after give_back
SCRIPT = """
import json
from apiservice_operator.run import heap
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024
before = rss()
blocks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]
pin = bytes(3000) + b'x'
del blocks
freed = rss()
trimmed = heap.give_back()
print(json.dumps({"before": before, "freed": freed, "trimmed": trimmed, "after": rss()}))
"""


@pytest.mark.skipif(not heap.available(), reason="no malloc_trim in this C library (glibc has it)")
def test_freed_memory_pinned_in_the_heap_goes_back_to_the_os() -> None:
    out = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True,
                                    text=True).stdout)
    assert out["freed"] - out["before"] > 150, out  # freed, yet still counted: why the operator trims
    assert out["trimmed"] is True
    assert out["after"] - out["before"] < 50, out
