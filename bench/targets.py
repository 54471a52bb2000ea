"""The issue's targets, judged from one run's figures (pure). A figure that was not measured in this
run (a smaller configuration) gives no verdict rather than a guess."""

from __future__ import annotations

from dataclasses import dataclass

from bench.latency import RECOVERY_FAULTS, TWIN, US, USERS_HANDLED, Samples
from bench.scale import MassHang, ScaleResult

BUDGET = 5.0  # the operator's default --probe-timeout, which the bench does not change


@dataclass(frozen=True)
class Verdict:
    target: str
    met: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        word = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[self.met]
        return f"{self.target}: **{word}** ({self.detail})"


def _at(results: list[ScaleResult], n: int) -> ScaleResult | None:
    return next((r for r in results if r.n == n), None)


def evaluate(samples: Samples, results: list[ScaleResult], hangs: list[MassHang],
             interval: float | None) -> list[Verdict]:
    out: list[Verdict] = []
    big, small = _at(results, 1000), _at(results, 10)
    if big is None:
        out.append(Verdict("N = 1,000", None, "not in BENCH_SIZES"))
    else:
        every = big.first_verdicts_s
        passed = f"; all Passed after {big.all_passed_s:.1f} s" if big.all_passed_s is not None else \
            "; not all Passed within the bound"
        out.append(Verdict("all first verdicts at N = 1,000 within 15 s of the operator's start",
                           every is not None and every <= 15,
                           (f"{every:.1f} s" if every is not None else "not all within the bound") + passed))
        out.append(Verdict("a full sweep at N = 1,000 within 10 s", big.sweep_s <= 10,
                           f"{big.sweep_s:.2f} s at a periodic interval of {big.interval_s:.1f} s"))
        out.append(Verdict("steady state at N = 1,000: < 25 % of one core", big.cpu_percent < 25,
                           f"{big.cpu_percent:.1f} %"))
        out.append(Verdict("steady state at N = 1,000: < 150 MiB RSS", big.rss_mib < 150,
                           f"{big.rss_mib:.0f} MiB now, peak {big.peak_rss_mib:.0f} MiB"))
        out.append(Verdict("steady state at N = 1,000: 0 writes in the steady window", big.writes_steady == 0,
                           f"{big.writes_steady:.0f} in {big.window_s:.0f} s"))
    if small is not None:
        out.append(Verdict("steady state at N = 10: < 2 % of one core", small.cpu_percent < 2,
                           f"{small.cpu_percent:.1f} %"))
    if results:
        ok = all(abs(r.writes_for_flip - 1) < 1e-9 and r.writes_steady == 0 for r in results)
        out.append(Verdict("status writes == transitions, none at rest", ok, ", ".join(
            f"N={r.n}: {r.writes_for_flip:.3f} per transition, {r.writes_steady:.0f} at rest" for r in results)))
    for h in hangs:
        if h.n == 1000:
            every = MassHang.first_half_all(h.ours, h.healthy)[2]
            out.append(Verdict("mass hang at N = 1,000: all flipped within 15 s",
                               every is not None and every <= 15 and h.healthy == h.n,
                               (f"{every:.1f} s" if every is not None
                                else f"{len(h.ours)} of {h.healthy} within {h.bound_s:.0f} s")
                               + ("" if h.healthy == h.n else f"; only {h.healthy} of {h.n} passed before the hang")))
    hang = "server hangs (SIGSTOP)"
    ours, theirs = samples.median(hang, US), samples.median(hang, TWIN)
    if ours is not None and interval is not None:
        limit = BUDGET + interval
        ratio = f"; kube-apiserver unaided {theirs:.1f} s, ratio {ours / theirs:.2f}" if theirs else ""
        out.append(Verdict("single hang within 1 s of the physical limit (budget + periodic interval)",
                           ours <= limit + 1,
                           f"median {ours:.2f} s, limit {BUDGET:g} + {interval:g} = {limit:g} s{ratio}"))
    for fault in RECOVERY_FAULTS:
        ours, theirs = samples.median(fault, US, "recovery"), samples.median(fault, TWIN, "recovery")
        if ours is None or theirs is None:
            continue
        # ours says True only once kube-apiserver's aggregated discovery is Current again (the clients'
        # view): kube-apiserver's Available, unaided, is the reference the issue sets
        out.append(Verdict(f"recovery, {fault}: within kube-apiserver's own + 0.5 s", ours <= theirs + 0.5,
                           f"median {ours:.2f} s; kube-apiserver unaided {theirs:.2f} s"))
        users = samples.median(fault, USERS_HANDLED, "recovery")
        if users is not None:
            # what users of the same API get through kube-apiserver: its Available can be True while its
            # proxy still answers 503 (the users' column)
            out.append(Verdict(f"recovery, {fault}: within what its users get through kube-apiserver + 0.5 s",
                               ours <= users + 0.5, f"median {ours:.2f} s; its users' discovery answers again after "
                                                    f"{users:.2f} s (kube-apiserver's Available: {theirs:.2f} s)"))
    empty = "EndpointSlice emptied"
    ours, theirs = samples.median(empty, US), samples.median(empty, TWIN)
    if ours is not None and theirs is not None:
        out.append(Verdict("an emptied EndpointSlice within 1 s", ours <= 1,
                           f"{ours:.2f} s; kube-apiserver unaided {theirs:.2f} s"))
    return out
