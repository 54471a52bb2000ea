"""What an aggregated server's answer says: its discovery document (an APIResourceList) and, where
it refuses, the message of its Status. Pure: the prober hands in the bytes it read."""

from __future__ import annotations

from apiservice_operator.core import boundedjson

MAX_EXCERPT_CHARS = 300


def read_document(body: bytes, group_version: str) -> tuple[str | None, tuple[str, ...]]:
    """(what is wrong, or None; the top-level resource names the document lists)."""
    try:
        document = boundedjson.loads(body)
    except boundedjson.DocumentError as exc:
        return f"InvalidDiscoveryDocument: {exc}", ()
    if not isinstance(document, dict) or document.get("kind") != "APIResourceList":
        kind = document.get("kind") if isinstance(document, dict) else type(document).__name__
        return f"InvalidDiscoveryDocument: kind is {kind!r}, not 'APIResourceList'", ()
    if document.get("groupVersion") != group_version:
        return (f"InvalidDiscoveryDocument: groupVersion is {document.get('groupVersion')!r}, "
                f"not {group_version!r}"), ()
    resources = document.get("resources")
    names = tuple(sorted({str(r["name"]) for r in resources if isinstance(r, dict) and isinstance(r.get("name"), str)
                          and "/" not in r["name"]})) if isinstance(resources, list) else ()
    return None, names


def status_message(body: bytes) -> str:
    """A Status object's message, else the text itself; one line, bounded."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = boundedjson.loads(body)
    except boundedjson.DocumentError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        text = document["message"]
    return " ".join(text.split())[:MAX_EXCERPT_CHARS]
