"""The controller's named parts, each on its own: the retry policy, the endpoints APIServices share,
a server's pace, the periodic cadence, our last writes and the sweep. Plain data, no loop."""

from __future__ import annotations

import asyncio

import pytest

from apiservice_operator.check.cadence import Cadence
from apiservice_operator.check.memory import WATCH_LAG, BeforeWaiting, Sweep, Written
from apiservice_operator.check.pacing import Pacing
from apiservice_operator.check.sharing import EndpointSharing
from apiservice_operator.check.writegate import WriteGate
from apiservice_operator.core.model import (
    Condition,
    ErrorKind,
    ProbeResult,
    Status,
    Target,
    WriteDeferred,
    WriteFailed,
)
from apiservice_operator.core.retry import (
    CHEAP_RETRY_BASE,
    CHEAP_RETRY_CAP,
    MAX_HINT,
    RetryPolicy,
    cheap_retry_cap,
    retry_base,
)
from apiservice_operator.core.settings import Settings
from apiservice_operator.core.transitions import event_for_transition

A, B = Target("10.0.0.1", 8443), Target("10.0.0.2", 8443)


def ok(target: Target, latency: float = 0.01) -> ProbeResult:
    return ProbeResult(target, True, latency)


def failed(target: Target, error: ErrorKind) -> ProbeResult:
    return ProbeResult(target, False, 5.0, error, str(error))


# --- the retry policy ---------------------------------------------------------------------------
def no_jitter() -> RetryPolicy:
    return RetryPolicy(rand=lambda: 0.0)


def test_a_key_that_never_failed_has_no_retry_delay() -> None:
    assert no_jitter().delay("x", cap=20) is None


def test_retries_double_from_the_base_up_to_the_cap() -> None:
    policy = no_jitter()
    delays = []
    for _ in range(7):
        policy.failed("x")
        delays.append(policy.delay("x", cap=20))
    assert delays == [1, 2, 4, 8, 16, 20, 20]


def test_jitter_only_shortens_and_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(rand=lambda: 1.0)
    policy.failed("x")
    policy.failed("x")
    assert policy.delay("x", cap=20) == pytest.approx(2 * 0.9)


def test_a_cheap_failure_retries_from_its_own_base_and_a_kick_starts_it_over() -> None:
    policy = no_jitter()
    for _ in range(4):
        policy.failed("x", base=CHEAP_RETRY_BASE)
    assert policy.delay("x", cap=20) == pytest.approx(0.8)
    policy.kick("x")
    assert policy.delay("x", cap=20) == pytest.approx(CHEAP_RETRY_BASE)
    policy.failed("x")  # a timeout now: the policy's own base again
    assert policy.delay("x", cap=20) == pytest.approx(2.0)


def test_refused_and_error_statuses_are_cheap_to_ask_again_and_timeouts_are_not() -> None:
    assert retry_base([failed(A, ErrorKind.REFUSED), failed(B, ErrorKind.HTTP_STATUS)]) == CHEAP_RETRY_BASE
    assert retry_base([failed(A, ErrorKind.REFUSED), failed(B, ErrorKind.TIMEOUT)]) is None
    assert retry_base([failed(A, ErrorKind.TLS)]) is None
    assert retry_base([ok(A)]) is None  # the endpoints pass: what fails is another hop, at the policy's pace


@pytest.mark.parametrize(("failing", "interval", "cap"), [
    (1, 20.0, CHEAP_RETRY_CAP),  # one server down: asked again four times a second
    (5, 20.0, CHEAP_RETRY_CAP),  # 5 at 0.25 s: 20/s, the probe rate
    (10, 20.0, 0.5),  # 10 share it: each every 0.5 s
    (100, 20.0, 5.0),  # 100 share the rate: each every 5 s
    (1000, 20.0, 20.0),  # never past the periodic interval
    (1, 0.2, 0.2),  # nor past a periodic interval shorter than the cap
])
def test_cheap_retries_are_capped_short_while_few_fail_and_within_the_rate_when_many(
    failing: int, interval: float, cap: float,
) -> None:
    assert cheap_retry_cap(failing, 20.0, interval) == pytest.approx(cap)


def test_success_resets_and_each_key_counts_alone() -> None:
    policy = no_jitter()
    policy.failed("x")
    policy.failed("x")
    policy.failed("y")
    policy.succeeded("x")
    assert policy.delay("x", cap=20) is None and policy.delay("y", cap=20) == 1


def test_a_retry_after_hint_is_a_floor_even_above_the_cap_but_bounded() -> None:
    policy = no_jitter()
    policy.failed("x", hint=30)
    assert policy.delay("x", cap=20) == 30
    policy.failed("x")  # a failure without a hint: the old hint no longer holds
    assert policy.delay("x", cap=20) == 2
    policy.failed("x", hint=10 ** 6)
    assert policy.delay("x", cap=20) == MAX_HINT


def test_a_kick_starts_the_backoff_over_and_drops_the_hint() -> None:
    policy = no_jitter()
    for _ in range(5):
        policy.failed("x", hint=60)
    policy.kick("x")
    assert policy.delay("x", cap=20) == 1
    policy.kick("never-failed")
    assert policy.delay("never-failed", cap=20) is None


def test_many_failures_do_not_overflow() -> None:
    policy = no_jitter()
    for _ in range(5000):
        policy.failed("x")
    assert policy.delay("x", cap=20) == 20


# --- the endpoints APIServices share ------------------------------------------------------------
def test_an_endpoint_that_stops_answering_is_news_for_every_other_apiservice_behind_it() -> None:
    sharing = EndpointSharing()
    assert sharing.record("a", [ok(A)]) == set()
    assert sharing.record("b", [ok(A)]) == set()
    assert sharing.record("c", [ok(B)]) == set()
    assert sharing.record("a", [failed(A, ErrorKind.TIMEOUT)]) == {"b"}
    assert sharing.record("b", [failed(A, ErrorKind.REFUSED)]) == set()  # still down: no news
    assert sharing.record("b", [ok(A)]) == {"a"}  # answers again


def test_a_tls_or_http_failure_is_not_news_for_the_others() -> None:
    sharing = EndpointSharing()
    sharing.record("a", [ok(A)])
    sharing.record("b", [ok(A)])
    assert sharing.record("a", [failed(A, ErrorKind.TLS)]) == set()
    assert sharing.record("a", [failed(A, ErrorKind.HTTP_STATUS)]) == set()


def test_a_forgotten_apiservice_is_no_longer_behind_its_endpoints() -> None:
    sharing = EndpointSharing()
    sharing.record("a", [ok(A)])
    sharing.record("b", [ok(A)])
    sharing.forget("b")
    assert sharing.users(A) == {"a"}
    sharing.forget("a")
    assert sharing.users(A) == set()
    assert sharing.record("c", [failed(A, ErrorKind.TIMEOUT)]) == set()  # nothing known of A any more


# --- a server's pace ----------------------------------------------------------------------------
def test_one_slow_answer_is_paced_by_the_previous_and_a_second_shows() -> None:
    pacing = Pacing()
    assert pacing.paced("a", [ok(A, 0.1)])[0].latency == 0.1
    assert pacing.paced("a", [ok(A, 4.0)])[0].latency == 0.1
    assert pacing.paced("a", [ok(A, 4.0)])[0].latency == 4.0
    assert pacing.paced("b", [ok(A, 4.0)])[0].latency == 4.0  # each APIService its own memory


def test_failures_are_not_paced_and_break_the_run() -> None:
    pacing = Pacing()
    pacing.paced("a", [ok(A, 0.1)])
    assert pacing.paced("a", [failed(A, ErrorKind.TIMEOUT)])[0].latency == 5.0
    assert pacing.paced("a", [ok(A, 3.0)])[0].latency == 3.0


# --- the periodic cadence -----------------------------------------------------------------------
def test_the_interval_follows_the_number_probed_within_the_rate() -> None:
    cadence = Cadence(Settings(probe_interval=20, min_probe_interval=4, max_probe_rate=50))
    assert cadence.interval() == 4
    for i in range(500):
        cadence.probed(f"a{i}", True)
    assert cadence.interval() == 10
    for i in range(500):
        cadence.probed(f"a{i}", False)
    assert cadence.interval() == 4


def test_the_first_periodic_check_comes_at_a_random_phase_then_every_interval_less_jitter() -> None:
    cadence = Cadence(Settings(), rand=lambda: 0.25)
    assert cadence.next_delay("a", 20) == 5
    assert cadence.next_delay("a", 20) == pytest.approx(19.5)
    cadence.forget("a")
    assert cadence.next_delay("a", 20) == 5


# --- our last writes and the sweep --------------------------------------------------------------
def conditions(reason: str) -> list[Condition]:
    return [Condition("apiservice-operator.io/Available", Status.TRUE, reason, "m", "t")]


def obj(rv: str) -> dict[str, object]:
    return {"metadata": {"resourceVersion": rv}}


def test_what_we_wrote_counts_until_the_watch_brings_that_write_back() -> None:
    now = [0.0]
    written = Written(clock=lambda: now[0])
    written.remember("a", conditions("Passed"), "9")  # our write made resourceVersion 9
    assert written.previous("a", obj("7")) == conditions("Passed")  # the index: what we read
    # kube-apiserver's own status update landed just before ours and reached the index first
    assert written.previous("a", obj("8")) == conditions("Passed")
    assert written.previous("b", obj("8")) is None
    written.arrived("a", "8")
    assert written.previous("a", obj("8")) == conditions("Passed")
    written.arrived("a", "9")  # ours: the index holds it (or newer) from now on
    assert written.previous("a", obj("10")) is None

    written.remember("a", conditions("Passed"), "11")
    assert written.previous("a", obj("11")) is None  # the index shows our write itself
    written.remember("a", conditions("Passed"), "12")
    written.forget("a")
    assert written.previous("a", obj("10")) is None
    written.remember("a", conditions("Passed"), "")  # an answer without a resourceVersion: cannot tell
    assert written.previous("a", obj("10")) is None
    written.remember("a", conditions("Passed"), "13")
    now[0] += WATCH_LAG + 1  # the watch never brought it (a relist skips versions): the index stands
    assert written.previous("a", obj("10")) is None


def _verdict(status: Status, reason: str, degraded: Status = Status.FALSE) -> list[Condition]:
    return [Condition("apiservice-operator.io/Available", status, reason, reason, "t"),
            Condition("apiservice-operator.io/Degraded", degraded, "d", "d", "t")]


def _told(waits: BeforeWaiting, steps: list[list[Condition]]) -> list[str | None]:
    """The Events a run of verdicts makes, each change told as the controller tells it."""
    told: list[str | None] = []
    before: dict[str, Condition] = {}
    for new in steps:
        event = event_for_transition(waits.against("a", before, new), new[0], new[1])
        told.append(event.reason if event else None)
        before = {c.type: c for c in new}
    return told


def test_a_recovery_through_a_wait_for_kube_apiserver_is_told_as_recovered() -> None:
    """The operations suite's flapping server, once in a full run: repaired, kube-apiserver still
    answered 503 until its own check passed (False/AwaitingKubeAPIServer), and the Passed after it
    counted as a first verdict: no Recovered."""
    ok, failed = _verdict(Status.TRUE, "Passed"), _verdict(Status.FALSE, "FailedDiscoveryCheck")
    waiting = _verdict(Status.FALSE, "AwaitingKubeAPIServer")
    # its proxy passes, its aggregated discovery not yet Current: a second wait, Unknown
    catching_up = _verdict(Status.UNKNOWN, "AwaitingKubeAPIServer")
    assert _told(BeforeWaiting(), [ok, failed, waiting, catching_up, ok]) == [
        None, "FailedDiscoveryCheck", None, None, "Recovered"]
    assert _told(BeforeWaiting(), [ok, failed, waiting, ok]) == [None, "FailedDiscoveryCheck", None, "Recovered"]
    # still failing after the wait: nothing moved, nothing to tell again
    assert _told(BeforeWaiting(), [ok, failed, waiting, failed]) == [None, "FailedDiscoveryCheck", None, None]
    # a new APIService: its first verdict after a wait is its first
    assert _told(BeforeWaiting(), [_verdict(Status.UNKNOWN, "AwaitingKubeAPIServer"), ok]) == [None, None]


def test_a_wait_on_degraded_alone_is_no_news_either_way() -> None:
    """One instance's aggregated discovery catching up (Degraded Unknown/Awaiting) made a Recovered,
    and the Degraded after it the same Warning again."""
    stale = _verdict(Status.TRUE, "Passed", Status.TRUE)
    catching_up = [stale[0], Condition(stale[1].type, Status.UNKNOWN, "AwaitingKubeAPIServer", "w", "t")]
    ok = _verdict(Status.TRUE, "Passed")
    assert _told(BeforeWaiting(), [ok, stale, catching_up, stale, catching_up, ok]) == [
        None, "d", None, None, None, "Recovered"]
    # Available moving is told at once, whatever Degraded waits on
    failed = _verdict(Status.FALSE, "FailedDiscoveryCheck")
    recovered_waiting = [ok[0], catching_up[1]]
    assert _told(BeforeWaiting(), [ok, failed, recovered_waiting, ok]) == [
        None, "FailedDiscoveryCheck", "Recovered", None]


def test_a_wait_in_the_status_at_start_is_no_verdict() -> None:
    """After a restart the memory is empty: what follows a wait read from the status is the first."""
    waits = BeforeWaiting()
    before = {c.type: c for c in _verdict(Status.UNKNOWN, "AwaitingKubeAPIServer")}
    ok = _verdict(Status.TRUE, "Passed")
    assert waits.against("a", before, ok) == before
    assert event_for_transition(before, ok[0], ok[1]) is None


def test_a_sweep_ends_when_every_apiservice_was_checked_once() -> None:
    sweep = Sweep()
    listed = 0

    def names() -> list[str]:
        nonlocal listed
        listed += 1
        return ["a", "b"]

    first = sweep.done("a", 0.0, names)
    assert first is not None and first.took is None and first.next_size == 2
    assert sweep.done("a", 1.0, names) is None
    ended = sweep.done("b", 3.5, names)
    assert ended is not None and ended.took == 3.5
    assert listed == 2  # the APIServices are listed only when a sweep ends, not per check


# --- the pace of status writes ------------------------------------------------------------------
async def _write_through(gate: WriteGate, count: int) -> tuple[list[float], float]:
    """`count` writes at once through the gate: when each was sent and how long all took, in seconds
    from the start."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent: list[float] = []

    async def write() -> bool:
        sent.append(loop.time() - start)
        return True

    await asyncio.gather(*(gate.send(write) for _ in range(count)))
    return sent, loop.time() - start


@pytest.mark.looptime
async def test_writes_go_at_most_at_the_rate_in_bursts_of_one_second() -> None:
    sent, took = await _write_through(WriteGate(rate=10), 50)
    assert took == pytest.approx(4.0, abs=0.2)  # 10 at once, then 10 a second
    assert len(sent) == 50


@pytest.mark.looptime
async def test_a_burst_stored_up_at_rest_goes_at_once_then_the_rate_paces_the_rest() -> None:
    """A start or a shared server's hang writes many verdicts at once: the first `burst` go as fast as
    they are taken, the rest at the rate, and a quiet spell stores the burst up again."""
    gate = WriteGate(rate=10, burst=30)
    sent, took = await _write_through(gate, 50)
    assert sum(1 for t in sent if t < 0.01) == 30
    assert took == pytest.approx(2.0, abs=0.2)  # the other 20 at 10 a second
    await asyncio.sleep(10)  # at rest: 100 more would fit, the burst is what is kept
    sent, took = await _write_through(gate, 40)
    assert sum(1 for t in sent if t < 0.01) == 30
    assert took == pytest.approx(1.0, abs=0.2)


@pytest.mark.looptime
async def test_a_refused_write_defers_the_others_until_a_trial_lands() -> None:
    gate = WriteGate(rate=100, retry=RetryPolicy(rand=lambda: 0.0))
    refuse = True

    async def write() -> str:
        if refuse:
            raise WriteFailed("HTTP 429", retry_after=3.0)
        return "ok"

    with pytest.raises(WriteFailed):
        await gate.send(write)
    with pytest.raises(WriteDeferred) as deferred:
        await gate.send(write)  # within the backoff: not sent
    assert deferred.value.retry_after == pytest.approx(3.0)
    assert gate.sent == 1
    await asyncio.sleep(3)
    refuse = False
    assert await gate.send(write) == "ok"  # the first after the backoff lands: two at a time now
    assert gate.throttled
    for _ in range(5):  # 2, 4, 8, 16, 32 ... 64: full pace after six in a row
        assert await gate.send(write) == "ok"
    assert not gate.throttled
    assert gate.sent == 7


@pytest.mark.looptime
async def test_after_a_refusal_one_write_goes_at_a_time_and_the_others_are_deferred() -> None:
    gate = WriteGate(rate=100, retry=RetryPolicy(rand=lambda: 0.0))

    async def refused() -> str:
        raise WriteFailed("HTTP 429")

    async def slow() -> str:
        await asyncio.sleep(1)
        return "ok"

    with pytest.raises(WriteFailed):
        await gate.send(refused)
    await asyncio.sleep(1)  # the backoff
    first = asyncio.ensure_future(gate.send(slow))
    await asyncio.sleep(0.1)
    with pytest.raises(WriteDeferred):
        await gate.send(slow)  # window 1, one in flight: not sent
    assert await first == "ok"
    results = await asyncio.gather(gate.send(slow), gate.send(slow))  # window 2 now
    assert list(results) == ["ok", "ok"] and gate.sent == 4
