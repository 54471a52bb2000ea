"""The clients' view (DESIGN 10): what kubectl and every client-go controller read about an
APIService's group/version in kube-apiserver's aggregated discovery (`GET /apis`, v2), and what
schema-aware clients (`kubectl explain`, client-side validation, code generators) read in its
`/openapi/v3`, per kube-apiserver instance. client-go turns `Stale` into an error ("stale
GroupVersion discovery"), which blocks namespace deletion and garbage collection like an
unavailable API; a group/version that is missing or listed without resources leaves `kubectl get`
with "the server doesn't have a resource type".

Where an instance's view is wrong, the aggregated server's own answers to the documents
kube-apiserver builds it from say whose fault it is (kube-aggregator v0.37.2):
- `handler_discovery.go`: the server's root `/apis` with the v2 Accept header, within 5 s; a 503 or
  no answer makes the group/version Stale; any other answer that is not v2 falls back to the
  legacy `/apis/<g>/<v>` (Current); a v2 document without the group/version leaves it without
  resources.
- `openapiv3/aggregator`: the server's `/openapi/v3`; a 404 falls back to `/openapi/v2`
  (converted); any other failure leaves the group/version out of `/openapi/v3`.
Pure: reading the documents is probing/clientview.py's and the prober's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apiservice_operator.core.model import Target

V2_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
V2_KIND = "as=APIGroupDiscoveryList"  # in the Content-Type of a v2 answer
DISCOVERY_TIMEOUT = 5.0  # seconds kube-apiserver gives a server's /apis (its TimeoutHandler)


class Freshness(enum.StrEnum):
    CURRENT = "Current"  # listed, fresh, with its resources (when its server lists any)
    STALE = "Stale"  # listed Stale: kube-apiserver could not refresh it (its server's /apis failed)
    MISSING = "Missing"  # not listed at all
    EMPTY = "Empty"  # listed Current but without the resources its server's own document lists


class OpenAPI(enum.StrEnum):
    LISTED = "Listed"  # in the instance's /openapi/v3, its document answering within the budget
    MISSING = "Missing"  # not in /openapi/v3: kube-apiserver could not read the server's OpenAPI
    FAILING = "Failing"  # listed, but its document did not answer in time or whole


@dataclass(frozen=True)
class InstanceView:
    instance: Target
    freshness: Freshness | None  # None: this instance's /apis could not be read (no evidence)
    resources: tuple[str, ...] = ()
    detail: str = ""  # why it could not be read
    openapi: OpenAPI | None = None  # None: this instance's /openapi/v3 could not be read
    openapi_detail: str = ""

    def describe(self) -> str:
        if self.freshness is None:
            return f"{self.instance.endpoint}: not read ({self.detail})"
        return f"{self.instance.endpoint}: {self.freshness}"


class Document(enum.StrEnum):
    """The documents of the aggregated server that kube-apiserver builds the clients' view from."""

    APIS = "/apis"
    OPENAPI_V3 = "/openapi/v3"
    OPENAPI_V2 = "/openapi/v2"


@dataclass(frozen=True)
class ServerAnswer:
    """The aggregated server's own answer to one of those documents, asked directly at one endpoint."""

    document: Document
    endpoint: str
    status: int | None  # None: no answer (detail says why)
    seconds: float
    content_type: str = ""
    detail: str = ""
    serves: bool = False  # would kube-apiserver build its view from it (see judge_apis, judge_openapi)

    def describe(self) -> str:
        asked = f"{self.document}{' (v2 Accept)' if self.document is Document.APIS else ''} from {self.endpoint}"
        if self.status is None:
            return f"{asked}: {self.detail}"
        kind = f", {self.content_type}" if self.content_type else ""
        note = f": {self.detail}" if self.detail else ""
        # coarse: the words go into our conditions, and a message that changes at every check is a write
        took = "<1s" if self.seconds < 1 else f"{self.seconds:.0f}s"
        return f"{asked}: {self.status} in {took}{kind}{note}"


def judge_apis(endpoint: str, status: int | None, seconds: float, content_type: str, document: Any,
               group_version: str, error: str = "") -> ServerAnswer:
    """The server's root /apis as kube-apiserver's discovery manager takes it."""
    if status is None:
        return ServerAnswer(Document.APIS, endpoint, None, seconds, detail=error or "no answer")
    if seconds > DISCOVERY_TIMEOUT:
        return ServerAnswer(Document.APIS, endpoint, status, seconds, content_type,
                            f"past kube-apiserver's {DISCOVERY_TIMEOUT:g} s: it marks the group Stale")
    if status == 503:
        return ServerAnswer(Document.APIS, endpoint, status, seconds, content_type,
                            "503 makes kube-apiserver mark the group Stale")
    if status != 200 or V2_KIND not in content_type:
        return ServerAnswer(Document.APIS, endpoint, status, seconds, content_type,
                            "not v2: kube-apiserver falls back to /apis/<group>/<version>", serves=True)
    if group_version not in group_versions(document):
        return ServerAnswer(Document.APIS, endpoint, status, seconds, content_type,
                            f"its v2 document does not list {group_version}")
    return ServerAnswer(Document.APIS, endpoint, status, seconds, content_type, f"lists {group_version}",
                        serves=True)


def judge_openapi(document: Document, endpoint: str, status: int | None, seconds: float, content_type: str,
                  error: str = "") -> ServerAnswer:
    """The server's /openapi/v3 or /openapi/v2 as kube-apiserver's OpenAPI aggregation takes it (a
    v3 404 falls back to v2: the caller judges the pair, see openapi_served)."""
    if status is None:
        return ServerAnswer(document, endpoint, None, seconds, detail=error or "no answer")
    return ServerAnswer(document, endpoint, status, seconds, content_type, serves=status == 200)


def openapi_served(answers: Sequence[ServerAnswer]) -> bool:
    """kube-apiserver gets the server's OpenAPI: /openapi/v3, or /openapi/v2 where v3 answers 404."""
    v3 = next((a for a in answers if a.document is Document.OPENAPI_V3), None)
    v2 = next((a for a in answers if a.document is Document.OPENAPI_V2), None)
    if v3 is not None and v3.serves:
        return True
    return v3 is not None and v3.status == 404 and v2 is not None and v2.serves


@dataclass(frozen=True)
class ClientView:
    """The group/version as each kube-apiserver instance's aggregated discovery and /openapi/v3 show
    it, and the server's own answers where they were asked (only when something is wrong)."""

    instances: tuple[InstanceView, ...]
    server: tuple[ServerAnswer, ...] = ()

    def read(self) -> tuple[InstanceView, ...]:
        return tuple(v for v in self.instances if v.freshness is not None)

    def openapi_read(self) -> tuple[InstanceView, ...]:
        return tuple(v for v in self.instances if v.openapi is not None)

    def wants(self) -> tuple[Document, ...]:
        """Which of the server's own documents would say whose fault a wrong view is."""
        wanted: list[Document] = []
        if any(v.freshness is not Freshness.CURRENT for v in self.read()):
            wanted.append(Document.APIS)
        if any(v.openapi is not OpenAPI.LISTED for v in self.openapi_read()):
            wanted += [Document.OPENAPI_V3, Document.OPENAPI_V2]
        return tuple(wanted)

    def answer(self, document: Document) -> ServerAnswer | None:
        return next((a for a in self.server if a.document is document), None)


def group_versions(document: Any) -> dict[str, tuple[str, tuple[str, ...]]]:
    """An APIGroupDiscoveryList as {"group/version": (freshness, top-level resource names)}; the
    legacy core group is "v1". Anything not shaped like one yields nothing for it."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    items = document.get("items") if isinstance(document, Mapping) else None
    for item in items if isinstance(items, Sequence) else ():
        if not isinstance(item, Mapping):
            continue
        group = str((item.get("metadata") or {}).get("name") or "")
        for version in item.get("versions") or ():
            if not isinstance(version, Mapping) or not version.get("version"):
                continue
            key = f"{group}/{version['version']}" if group else str(version["version"])
            names = tuple(sorted(str(r.get("resource")) for r in version.get("resources") or ()
                                 if isinstance(r, Mapping) and r.get("resource")))
            # an omitted freshness is Current (its zero value)
            found[key] = (str(version.get("freshness") or Freshness.CURRENT), names)
    return found


def freshness_of(listed: Mapping[str, tuple[str, tuple[str, ...]]], group_version: str,
                 own_resources: Sequence[str]) -> tuple[Freshness, tuple[str, ...]]:
    """One instance's view of `group_version`, against the resources its server's own discovery
    document lists (top-level names: subresources nest differently in v2)."""
    entry = listed.get(group_version)
    if entry is None:
        return Freshness.MISSING, ()
    freshness, names = entry
    if freshness == Freshness.STALE:
        return Freshness.STALE, names
    if own_resources and not set(own_resources) & set(names):
        return Freshness.EMPTY, names
    return Freshness.CURRENT, names


def openapi_paths(document: Any) -> dict[str, str]:
    """An /openapi/v3 root as {"group/version": its document's server-relative URL}; the legacy core
    group is "v1". Anything not shaped like one yields nothing for it."""
    paths = document.get("paths") if isinstance(document, Mapping) else None
    found: dict[str, str] = {}
    for key, entry in paths.items() if isinstance(paths, Mapping) else ():
        url = entry.get("serverRelativeURL") if isinstance(entry, Mapping) else None
        if not isinstance(key, str) or not isinstance(url, str):
            continue
        if key.startswith("apis/"):
            found[key[len("apis/"):]] = url
        elif key.startswith("api/"):
            found[key[len("api/"):]] = url
    return found
