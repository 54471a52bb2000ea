"""The resync's bookkeeping: which objects the watches hold, and which of them a list lacks."""

from __future__ import annotations

from apiservice_operator.kube import resync


def test_unlisted_names_what_we_hold_and_the_server_lacks() -> None:
    held = [("ns", "a", "uid-a"), ("ns", "b", "uid-b"), (None, "v1.x", "uid-x")]
    listed = [("ns", "a", "uid-a"), (None, "v1.x", "uid-x")]
    assert resync.unlisted(held, listed) == [("ns", "b", "uid-b")]


def test_an_object_made_again_under_its_name_is_a_different_object() -> None:
    held = [("ns", "a", "old-uid")]
    listed = [("ns", "a", "new-uid")]
    assert resync.unlisted(held, listed) == [("ns", "a", "old-uid")]


def test_watched_forgets_on_delete() -> None:
    watched = resync.Watched()
    watched.saw(resync.APISERVICES, None, "v1.x.example.com", "u1")
    watched.saw(resync.APISERVICES, None, "v1.y.example.com", "u2")
    assert watched.count(resync.APISERVICES) == 2
    watched.deleted(resync.APISERVICES, None, "v1.x.example.com", "u1")
    assert watched.count(resync.APISERVICES) == 1


def test_watched_ignores_objects_without_uid() -> None:
    watched = resync.Watched()
    watched.saw(resync.APISERVICES, None, "a", None)
    assert watched.count(resync.APISERVICES) == 0


def test_object_paths() -> None:
    assert resync.APISERVICES.path_of(None, "v1.x") == "/apis/apiregistration.k8s.io/v1/apiservices/v1.x"
