"""How busy the machine is apart from the benchmark: the load average and the CPU that processes
outside the benchmark's own process tree use, from /proc. A benchmark of CPU and latency on a
machine that is busy with something else measures that something else (the 2026-11-23 run did)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
QUIET_PERCENT = 10.0  # of one core, used by everything outside the benchmark: above it, say it is not quiet


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cpu_s: float  # user + system, since the process started


def parse_stat(pid: int, text: str) -> Proc:
    """One /proc/PID/stat line. The command sits in parentheses and may hold spaces or ')'."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    comm = head.split("(", 1)[1] if "(" in head else "?"
    return Proc(pid, int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)


def snapshot() -> dict[int, Proc]:
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                procs[int(entry.name)] = parse_stat(int(entry.name), (entry / "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return procs


def descendants(procs: Mapping[int, Proc], root: int) -> set[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_by_process(before: Mapping[int, Proc], after: Mapping[int, Proc], seconds: float,
                   exclude: set[int]) -> list[tuple[float, Proc]]:
    """(% of one core, process) over the interval, busiest first, for processes alive at both ends
    and not excluded. A process that ended in between is not seen: a short sample says so."""
    out = []
    for pid, p in after.items():
        if pid in exclude or pid not in before or before[pid].comm != p.comm:
            continue
        used = p.cpu_s - before[pid].cpu_s
        if used > 0:
            out.append((100 * used / seconds, p))
    return sorted(out, key=lambda x: -x[0])


def loadavg(text: str | None = None) -> tuple[float, float, float]:
    parts = (text if text is not None else Path("/proc/loadavg").read_text()).split()
    return float(parts[0]), float(parts[1]), float(parts[2])


@dataclass(frozen=True)
class Load:
    loadavg: tuple[float, float, float]
    seconds: float
    others_percent: float  # of one core, by processes outside the benchmark's tree
    top: tuple[tuple[float, str], ...]  # (% of one core, "comm (pid)")

    @property
    def quiet(self) -> bool:
        return self.others_percent < QUIET_PERCENT

    def describe(self) -> str:
        busiest = ", ".join(f"{c} {p:.0f} %" for p, c in self.top) or "none"
        verdict = "quiet" if self.quiet else f"NOT quiet (over {QUIET_PERCENT:.0f} % of a core)"
        return (f"load average {self.loadavg[0]:.2f} / {self.loadavg[1]:.2f} / {self.loadavg[2]:.2f} (1/5/15 min); "
                f"other processes used {self.others_percent:.1f} % of one core over {self.seconds:.0f} s: "
                f"{verdict}; busiest: {busiest}")


def others(before: Mapping[int, Proc], after: Mapping[int, Proc], seconds: float, root: int,
           load: tuple[float, float, float]) -> Load:
    mine = descendants(after, root) | descendants(before, root)
    used = cpu_by_process(before, after, seconds, mine)
    return Load(load, seconds, sum(p for p, _ in used),
                tuple((p, f"{proc.comm} ({proc.pid})") for p, proc in used[:5] if p >= 0.5))


def measure(seconds: float = 5.0, root: int | None = None) -> Load:
    """The machine's load apart from the process tree under `root` (default: this process)."""
    root = os.getpid() if root is None else root
    before, t0 = snapshot(), time.monotonic()
    time.sleep(seconds)
    after, t1 = snapshot(), time.monotonic()
    return others(before, after, t1 - t0, root, loadavg())


class Meter:
    """Others' CPU between start() and stop(), for a measurement window."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self._before: dict[int, Proc] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._before, self._t0 = snapshot(), time.monotonic()

    def stop(self) -> Load:
        after = snapshot()
        return others(self._before, after, time.monotonic() - self._t0, self.root, loadavg())
