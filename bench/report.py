"""The results file (markdown) and its plot."""

from __future__ import annotations

import collections
import math
import platform
import re
import textwrap
from pathlib import Path

from bench.latency import AIDED, BOUND, TWIN, US, USERS, USERS_HANDLED, WHICH, Samples, summarise
from bench.load import Load
from bench.scale import MassHang, ScaleResult
from bench.targets import BUDGET, Verdict

HOW_TWINS = (
    "Each fault acts on one server (or Service, or path) behind two APIServices that differ only in group and "
    "one label: the handled one, and its twin labelled `bench-twin=true`. The operator runs with "
    "`--selector '!bench-twin'`: twins are not in its indexes, never probed, never written, so kube-apiserver's "
    "Available on a twin changes only when kube-apiserver itself notices (its 30 s resync, its backoff, or an "
    "EndpointSlice event). Ours is timed on the handled object. The third column is the old method, kube-apiserver "
    "timed on the object we write, whose every status write makes it re-check at once: shown only for comparison. "
    "The users' column is what a user gets after the repair: a discovery request through kube-apiserver, every "
    "20 ms, until it answers 200, for the twin's group and for the handled one. kube-apiserver's Available can say "
    "True long before that: one worker takes every APIService's verdict into its proxy, and while a server hangs "
    "that worker waits on its OpenAPI download (kube-aggregator's AddAPIService calls UpdateAPIServiceSpec, which "
    "downloads under the OpenAPI aggregator's lock), so every other proxy keeps its old state meanwhile.")


def _s(v: float | None) -> str:
    return f"never (>{BOUND:.0f} s)" if v is None else f"{v:.2f} s"


def _opt(v: float | None, unit: str = " s", digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}{unit}"


def _cell(v: tuple[float | None, float | None, int]) -> str:
    never = f" ({v[2]} never)" if v[2] else ""
    return f"{_s(v[0])} / {_s(v[1])}{never}"


def latency_table(samples: Samples, intervals: dict[str, float]) -> list[str]:
    rows = ["| fault | phase | ours median / p90 | kube-apiserver unaided (twin) median / p90 | ours / unaided "
            "| kube-apiserver on our object (aided, old method) median | ours' physical limit "
            "| users through kube-apiserver: discovery answers again, median, twin / handled | n |",
            "|---|---|---|---|---|---|---|---|---|"]
    for fault, phases in samples.data.items():
        spec = samples.faults.get(fault)
        interval = intervals.get("path" if "(path)" in fault else "endpoints")
        limit = "n/a"
        if spec is not None and interval is not None:
            limit = {"event": "an event (ms)", "interval": f"interval {interval:g} s",
                     "budget + interval": f"{BUDGET:g} + {interval:g} s"}.get(
                spec.physical, f"{BUDGET:g} + {interval:g} s + /livez")
        for phase in ("fault", "recovery"):
            got = phases.get(phase, {})
            if not got:
                continue
            s = {w: summarise(got.get(w, [])) for w in WHICH}
            ours, twin, aided = s[US], s[TWIN], s[AIDED]
            ratio = f"{ours[0] / twin[0]:.2f}" if ours[0] is not None and twin[0] else "n/a"

            missing = "n/a (flips while one instance is cut)" if phase == "recovery" else "n/a"
            aided_cell = f"{_s(aided[0])}" if got.get(AIDED) else missing
            rows.append(f"| {fault} | {'detection' if phase == 'fault' else 'recovery'} | {_cell(ours)} | "
                        f"{_cell(twin) if got.get(TWIN) else missing} | {ratio} | {aided_cell} | "
                        f"{limit if phase == 'fault' else ''} | "
                        f"{_users(got)} | {len(got.get(US, []))} |")
    return rows


def _users(got: dict[str, list[float | None]]) -> str:
    if not got.get(USERS):
        return ""
    return f"{_s(summarise(got[USERS])[0])} / {_s(summarise(got.get(USERS_HANDLED, []))[0])}"


def scale_table(results: list[ScaleResult]) -> list[str]:
    rows = ["| N | first verdicts from the operator's start: median / all | all Passed | sweep | periodic interval "
            "| operator CPU (% of one core) | RSS now / peak | writes at rest | writes per transition | checks/s "
            "| connections opened/s | kube-apiserver: Available on all to serving all |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.n} | {_opt(r.first_verdict_median_s)} / {_opt(r.first_verdicts_s)} | "
                    f"{_opt(r.all_passed_s)} | {r.sweep_s:.2f} s | "
                    f"{r.interval_s:g} s | {r.cpu_percent:.1f} % | {r.rss_mib:.0f} / {r.peak_rss_mib:.0f} MiB | "
                    f"{r.writes_steady:.0f} in {r.window_s:.0f} s | {r.writes_for_flip:.3f} ({r.flipped} flipped) | "
                    f"{r.probes_per_s:.1f} | {r.connections_per_s:.1f} | {_opt(r.routed_s)} |")
    return rows


def path_table(results: list[ScaleResult]) -> list[str]:
    rows = ["| N | path probes/s (operator's `apiservice_operator_path_probes_total`) "
            "| kube-apiserver's view: requests/s it dispatched for ServiceAccounts (the operator's and the probe "
            "identity's), `apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"service-accounts\"}` "
            "| every request/s it dispatched, with / without the operator "
            "| kube-apiserver CPU with / without the operator |",
            "|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.n} | {r.path_probes_per_s:.1f} | {r.kube_sa_rps:.1f} | "
                    f"{r.kube_rps_with:.1f} / {r.kube_rps_without:.1f} | "
                    f"{r.kube_cpu_percent:.1f} % / {_opt(r.kube_cpu_without_percent, ' %')} |")
    return rows


def _hang_cells(r: MassHang, times: list[float]) -> str:
    first, half, every = MassHang.first_half_all(times, r.healthy)
    tail = _opt(every) if every is not None else f"{len(times)} of {r.healthy} within {r.bound_s:.0f} s"
    return f"{_opt(first, ' s', 2)} / {_opt(half)} / {tail}"


def hang_table(results: list[MassHang]) -> list[str]:
    rows = ["| N behind one hung server | ours first / half / all | kube-apiserver first / half / all "
            "(same objects; within the bound) |", "|---|---|---|"]
    for r in results:
        healthy = "" if r.healthy == r.n else f" ({r.healthy} passing on both sides when it stopped)"
        rows.append(f"| {r.n}{healthy} | {_hang_cells(r, r.ours)} | {_hang_cells(r, r.theirs)} |")
    return rows


def _frame(frame: str) -> str:
    return re.sub(r":\d+\)", ")", frame)


def _package(frame: str) -> str:
    """`func (httpx/_client.py:12)` -> httpx; a bare stdlib file (`selectors.py`) -> selectors."""
    match = re.search(r"\(([^():]+)(?::\d+)?\)$", frame)
    path = match[1] if match else frame
    parts = [p for p in path.split("/") if p]
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    if len(parts) > 1:
        return parts[0]
    return parts[0].removesuffix(".py") if parts else "?"


def profile_summary(raw: str, seconds: float | None = None, top: int = 12) -> list[str]:
    """py-spy raw (collapsed) stacks -> where the samples are: by leaf function, by the package of
    the leaf, and by the innermost apiservice_operator frame."""
    leaf: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf[_frame(frames[-1])] += count
        package[_package(frames[-1])] += count
        mine = [f for f in frames if "apiservice_operator" in f]
        ours[_frame(mine[-1]) if mine else "(not under apiservice_operator: kopf's watches and handlers)"] += count
    if not total:
        return ["(no profile samples)"]
    over = f" over {seconds:.0f} s at 100 per second (all threads; the CPU figure is in the scale table)" \
        if seconds else ""
    lines = [f"{total} samples of running threads{over}. By leaf function:", ""]
    lines += [f"- {100 * c / total:5.1f} %  {f}" for f, c in leaf.most_common(top)]
    lines += ["", "By the package of the leaf frame:", ""]
    lines += [f"- {100 * c / total:5.1f} %  {f}" for f, c in package.most_common(top)]
    lines += ["", "By the innermost apiservice_operator frame on the stack:", ""]
    lines += [f"- {100 * c / total:5.1f} %  {f}" for f, c in ours.most_common(top)]
    return lines


def write(path: Path, command: str, facts: dict[str, str], before: Load, samples: Samples,
          intervals: dict[str, float], scale: list[ScaleResult], hangs: list[MassHang],
          verdicts: list[Verdict], notes: list[str], big: list[str] | None = None) -> None:
    lines = ["# Benchmark: apiservice-operator beside kube-apiserver's availability controller", "",
             f"Command: `{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    lines += [f"- machine before the start: {before.describe()}"]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Detection latency, side by side without interference", "", HOW_TWINS, ""]
    lines += latency_table(samples, intervals)
    lines += ["", "## Mass hang", "", *hang_table(hangs)]
    lines += ["", "## Scale (five servers shared by N APIServices; the operator started with all of them present)", ""]
    lines += scale_table(scale)
    lines += ["", "## What the path probes add to kube-apiserver", ""]
    lines += path_table(scale)
    lines += ["", "Other processes during each steady window:", ""]
    lines += [f"- N = {r.n}: {r.others.describe()}" for r in scale if r.others is not None]
    if big is not None:
        lines += ["", "## Big cluster: 20 APIServices beside unrelated Services and EndpointSlices", "", *big]
    lines += ["", "## Targets", "", *(f"- {v.line()}" for v in verdicts)]
    for r in scale:
        if r.startup_profile:
            lines += ["", f"## Profile at N = {r.n}: from the operator's start to its last first verdict (py-spy)", ""]
            lines += profile_summary(r.startup_profile, r.first_verdicts_s)
        if r.profile:
            lines += ["", f"## Profile at N = {r.n}: steady state (py-spy, {r.window_s:.0f} s)", ""]
            lines += profile_summary(r.profile, r.window_s)
    for h in hangs:
        if h.profile:
            lines += ["", f"## Profile of the mass hang at N = {h.n} (py-spy, from the hang on)", ""]
            lines += profile_summary(h.profile, min(h.bound_s, 30))
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, samples: Samples, scale: list[ScaleResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5))
    faults = list(samples.data)
    x = range(len(faults))
    for offset, which, label in ((-0.27, US, "apiservice-operator"), (0, TWIN, "kube-apiserver unaided (twin)"),
                                 (0.27, AIDED, "kube-apiserver on our object (old method)")):
        medians = [summarise(samples.data[f]["fault"].get(which, []))[0] or 0 for f in faults]
        left.bar([i + offset for i in x], medians, width=0.27, label=label)
    left.set_xticks(list(x), [textwrap.fill(f, 18) for f in faults], fontsize=7)
    left.set_ylabel("median detection time (s)")
    left.set_title("Detection latency")
    left.legend(fontsize=8)
    ns = [r.n for r in scale]
    right.plot(ns, [r.first_verdicts_s or float("nan") for r in scale], marker="o", label="all first verdicts (s)")
    right.plot(ns, [r.sweep_s for r in scale], marker="^", label="sweep (s)")
    right.plot(ns, [r.cpu_percent for r in scale], marker="s", label="operator CPU (% of a core)")
    right.plot(ns, [r.path_probes_per_s for r in scale], marker="x", label="path probes/s to kube-apiserver")
    if scale:  # a log axis with no data fails (BENCH_SIZES=)
        right.set_xscale("log")
        right.set_yscale("log")
    right.set_xlabel("APIServices")
    right.set_title("Scale")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def machine_facts() -> dict[str, str]:
    import os

    mem = next((line.split(":")[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return {"python": platform.python_version(), "cores": str(os.cpu_count()), "memory": mem,
            "kernel": platform.release()}
