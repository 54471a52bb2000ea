"""Hostile JSON from a server never raises anything but DocumentError, and says what is wrong."""

from __future__ import annotations

import pytest

from apiservice_operator.core.boundedjson import MAX_DEPTH, DocumentError, loads, nesting_depth_over

HOSTILE = [
    ("deep nesting", b"[" * 5000, "nests deeper than"),
    ("a megabyte of [", b"[" * (1 << 20), "nests deeper than"),
    ("deep objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, "nests deeper than"),
    ("invalid UTF-8", b'{"kind": "\xff\xfe"}', "not UTF-8"),
    ("a huge integer", b"[" + b"9" * 100_000 + b"]", "Exceeds the limit"),
    ("an unterminated string", b'"' + b"a" * (1 << 20), "not JSON"),
    ("escaped quotes only", b'"\\' * (1 << 19), "not JSON"),
    ("not JSON", b"<html>oops</html>", "not JSON"),
]


@pytest.mark.parametrize(("data", "words"), [(d, w) for _, d, w in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_hostile_bodies_raise_document_error_naming_the_fault(data: bytes, words: str) -> None:
    with pytest.raises(DocumentError, match=words):
        loads(data)


def test_brackets_inside_strings_do_not_count() -> None:
    assert loads(b'["' + b"[" * 5000 + b'"]') == ["[" * 5000]
    assert loads(b'{"a": "\\\\", "b": ["\\"[[["]}') == {"a": "\\", "b": ['"[[[']}


def test_depth_up_to_the_limit_is_read() -> None:
    at_limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert not nesting_depth_over(at_limit)
    assert nesting_depth_over(b"[" + at_limit + b"]")
    assert loads(at_limit) is not None


def test_a_real_discovery_document_is_read() -> None:
    doc = b'{"kind":"APIResourceList","groupVersion":"x.example.com/v1","resources":[{"name":"ws","verbs":["get"]}]}'
    assert loads(doc)["groupVersion"] == "x.example.com/v1"
