"""--selector uses kubectl's label selector syntax."""

from __future__ import annotations

import pytest

from apiservice_operator.core.selector import LabelSelector

LABELS = {"team": "platform", "tier": "prod", "ha-test": "yes"}


@pytest.mark.parametrize(("selector", "matches"), [
    ("", True),
    ("team=platform", True),
    ("team==platform", True),
    ("team=other", False),
    ("team!=other", True),
    ("team!=platform", False),
    ("missing!=x", True),
    ("ha-test", True),
    ("!ha-test", False),
    ("!missing", True),
    ("tier in (prod, staging)", True),
    ("tier in (staging)", False),
    ("tier notin (staging,dev)", True),
    ("missing notin (x)", True),
    ("team=platform,tier in (prod),!missing", True),
    ("team=platform,tier=dev", False),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_selector_matches_like_kubectl(selector: str, matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is matches


@pytest.mark.parametrize("bad", ["team=a=b", "!tier in (a)", "tier in", "=x", "a b"])
def test_invalid_selector_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid label selector"):
        LabelSelector.parse(bad)


def test_no_labels_at_all() -> None:
    assert LabelSelector.parse("!team").matches(None)
    assert not LabelSelector.parse("team").matches(None)
