"""The Event message's shortening: what it keeps matters more than where it cuts."""

from __future__ import annotations

from apiservice_operator.kube.events import MAX_MESSAGE, short


def test_a_message_within_the_limit_is_left_alone() -> None:
    assert short("Available is False: connection refused") == "Available is False: connection refused"


def test_a_long_message_keeps_its_head_and_the_namespaces_it_blocks() -> None:
    message = "Available is False: " + "endpoint refused; " * 100 + "blocking deletion of 2 namespaces: a, b"
    shortened = short(message)
    assert len(shortened) == MAX_MESSAGE
    assert shortened.startswith("Available is False: ")
    assert shortened.endswith("blocking deletion of 2 namespaces: a, b")
    assert "…" in shortened
