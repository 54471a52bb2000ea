"""Silence: an endpoint that answered nothing for a whole budget is judged at once while a probe
to it is still open; any answer ends it. Plain data, times as numbers."""

from __future__ import annotations

from apiservice_operator.core.model import Target
from apiservice_operator.core.silence import Silence

HUNG = Target("10.0.0.1", 8443)
OTHER = Target("10.0.0.2", 8443)


def silent_since(start: float) -> Silence:
    """Two probes sent at `start` and `start + 1`; the first found no answer within its budget (5 s)."""
    silence = Silence()
    assert silence.start(HUNG, start) is False
    assert silence.start(HUNG, start + 1) is False
    silence.end(HUNG, start, start + 5, answered=False)
    return silence


def test_endpoint_silent_for_a_budget_is_judged_at_once_while_a_probe_is_open() -> None:
    silence = silent_since(0)
    assert silence.start(HUNG, 5.5) is True
    assert silence.silent(HUNG)


def test_other_endpoints_are_not_judged_by_one_silence() -> None:
    silence = silent_since(0)
    assert silence.start(OTHER, 5.5) is False
    assert not silence.silent(OTHER)


def test_any_answer_ends_the_silence() -> None:
    silence = silent_since(0)
    silence.end(HUNG, 1, 5.8, answered=True)  # the second probe got something back (a 500, a refusal)
    assert not silence.silent(HUNG)
    assert silence.start(HUNG, 6) is False


def test_silent_endpoint_with_no_probe_open_is_asked_again() -> None:
    silence = silent_since(0)
    silence.end(HUNG, 1, 6, answered=False)  # nothing open now
    assert silence.start(HUNG, 7) is False  # this one goes out and will say when the silence ends
    assert silence.silent(HUNG) is True  # its check is judged now
    assert silence.start(HUNG, 7.05) is True
    assert silence.start(HUNG, 7.1) is True


def test_an_endpoint_that_is_not_silent_is_waited_for() -> None:
    silence = Silence()
    assert silence.start(HUNG, 0) is False
    assert silence.silent(HUNG) is False


def test_a_timeout_after_another_request_was_answered_is_not_silence() -> None:
    silence = Silence()
    assert silence.start(HUNG, 0) is False  # a slow path of a server that answers others
    assert silence.start(HUNG, 1) is False
    silence.end(HUNG, 1, 1.2, answered=True)
    silence.end(HUNG, 0, 5, answered=False)
    assert not silence.silent(HUNG)
    assert silence.start(HUNG, 5.1) is False


def test_an_abandoned_probe_neither_answers_nor_silences() -> None:
    silence = Silence()
    assert silence.start(HUNG, 0) is False
    silence.end(HUNG, 0, 2, answered=None)  # a newer check replaced it
    assert not silence.silent(HUNG)
    silence = silent_since(0)
    silence.end(HUNG, 1, 5.5, answered=None)
    assert silence.silent(HUNG)  # still silent, but nothing is open: the next probe is sent
    assert silence.start(HUNG, 6) is False
