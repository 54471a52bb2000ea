"""The results file (markdown) and its plot."""

from __future__ import annotations

import collections
import platform
import re
from pathlib import Path

from bench.latency import BOUND, Samples, summarise
from bench.scale import MassHang, ScaleResult
from bench.watcher import OURS, THEIRS


def _s(v: float | None) -> str:
    return f"never (>{BOUND:.0f} s)" if v is None else f"{v:.2f} s"


def latency_table(samples: Samples) -> list[str]:
    rows = ["| fault | phase | ours median | ours p90 | kube-apiserver median | kube-apiserver p90 "
            "| ours / theirs (median) | n |", "|---|---|---|---|---|---|---|---|"]
    for fault, phases in samples.data.items():
        for phase in ("fault", "recovery"):
            ours = summarise(phases.get(phase, {}).get(OURS, []))
            theirs = summarise(phases.get(phase, {}).get(THEIRS, []))
            ratio = f"{ours[0] / theirs[0]:.3f}" if ours[0] is not None and theirs[0] else "n/a"
            n = len(phases.get(phase, {}).get(OURS, []))
            never = f" ({ours[2]} never)" if ours[2] else ""
            never_t = f" ({theirs[2]} never)" if theirs[2] else ""
            rows.append(f"| {fault} | {'detection' if phase == 'fault' else 'recovery'} | {_s(ours[0])}{never} | "
                        f"{_s(ours[1])} | {_s(theirs[0])}{never_t} | {_s(theirs[1])} | {ratio} | {n} |")
    return rows


def scale_table(results: list[ScaleResult]) -> list[str]:
    rows = ["| N | all first verdicts | sweep (operator metric) | CPU (% of one core) | peak RSS "
            "| writes in steady window | writes per transition | operator API requests/s (non-watch) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.n} | {r.first_verdicts_s:.1f} s | {r.sweep_s:.2f} s | {r.cpu_percent:.1f} % | "
                    f"{r.peak_rss_mib:.0f} MiB | {r.writes_steady:.0f} | "
                    f"{r.writes_for_flip:.2f} ({r.flipped} flipped) | {r.operator_rps:.2f} |")
    return rows


def hang_table(results: list[MassHang]) -> list[str]:
    rows = ["| N behind one hung server | ours first / half / all | kube-apiserver first / half / all |",
            "|---|---|---|"]
    for r in results:
        rows.append(f"| {r.n} | {' / '.join(_s(v) for v in r.ours)} | {' / '.join(_s(v) for v in r.theirs)} |")
    return rows


def profile_summary(raw: str, top: int = 12) -> list[str]:
    """py-spy raw (collapsed) stacks -> where the samples are, by leaf function and by our module."""
    leaf: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf[re.sub(r":\d+\)", ")", frames[-1])] += count
        mine = [f for f in frames if "apiservice_operator" in f]
        outside = "(not under apiservice_operator: kopf, aiohttp, idle)"
        ours[re.sub(r":\d+\)", ")", mine[-1]) if mine else outside] += count
    if not total:
        return ["(no profile samples)"]
    lines = [f"{total} samples. By leaf function:", ""]
    lines += [f"- {100 * c / total:5.1f} %  {f}" for f, c in leaf.most_common(top)]
    lines += ["", "By the innermost apiservice_operator frame on the stack:", ""]
    lines += [f"- {100 * c / total:5.1f} %  {f}" for f, c in ours.most_common(top)]
    return lines


def write(path: Path, command: str, facts: dict[str, str], samples: Samples, scale: list[ScaleResult],
          hangs: list[MassHang], targets: list[str]) -> None:
    lines = ["# Benchmark: apiservice-operator beside kube-apiserver's availability controller", "",
             f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += ["", "## Detection latency (fault to the Available flip, from watch events)", ""]
    lines += latency_table(samples)
    lines += ["", "## Mass hang", "", *hang_table(hangs)]
    lines += ["", "## Scale (five servers shared by N APIServices; defaults: interval N / 20 per s within 1-10 s, "
              "budget 5 s)", ""]
    lines += scale_table(scale)
    lines += ["", "## Targets", "", *(f"- {t}" for t in targets)]
    profiled = [r for r in scale if r.profile]
    if profiled:
        lines += ["", f"## Profile at N = {profiled[-1].n} (py-spy, steady state)", ""]
        lines += profile_summary(profiled[-1].profile)
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, samples: Samples, scale: list[ScaleResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    faults = list(samples.data)
    x = range(len(faults))
    for offset, which, label in ((-0.2, OURS, "apiservice-operator"), (0.2, THEIRS, "kube-apiserver")):
        medians = [summarise(samples.data[f]["fault"][which])[0] or 0 for f in faults]
        left.bar([i + offset for i in x], medians, width=0.4, label=label)
    left.set_xticks(list(x), [f.replace(" (", "\n(") for f in faults], fontsize=8)
    left.set_ylabel("median detection time (s)")
    left.set_title("Detection latency")
    left.legend()
    right.plot([r.n for r in scale], [r.sweep_s for r in scale], marker="o", label="sweep (s)")
    right.plot([r.n for r in scale], [r.cpu_percent / 10 for r in scale], marker="s", label="CPU (% / 10)")
    right.set_xscale("log")
    right.set_xlabel("APIServices")
    right.set_title("Scale")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def machine_facts() -> dict[str, str]:
    import os

    mem = next((line.split(":")[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return {"python": platform.python_version(), "cores": str(os.cpu_count()), "memory": mem,
            "kernel": platform.release()}
