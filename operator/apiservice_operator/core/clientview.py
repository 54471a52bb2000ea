"""The clients' view (DESIGN 10): what kubectl and every client-go controller read about an
APIService's group/version in kube-apiserver's aggregated discovery (`GET /apis`, v2), per
kube-apiserver instance. client-go turns `Stale` into an error ("stale GroupVersion discovery"),
which blocks namespace deletion and garbage collection like an unavailable API; a group/version
that is missing or listed without resources leaves `kubectl get` with "the server doesn't have a
resource type". Pure: reading the documents is probing/clientview.py's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apiservice_operator.core.model import Target

V2_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


class Freshness(enum.StrEnum):
    CURRENT = "Current"  # listed, fresh, with its resources (when its server lists any)
    STALE = "Stale"  # listed Stale: kube-apiserver could not refresh it (its server's /apis failed)
    MISSING = "Missing"  # not listed at all
    EMPTY = "Empty"  # listed Current but without the resources its server's own document lists


@dataclass(frozen=True)
class InstanceView:
    instance: Target
    freshness: Freshness | None  # None: this instance's /apis could not be read (no evidence)
    resources: tuple[str, ...] = ()
    detail: str = ""  # why it could not be read

    def describe(self) -> str:
        if self.freshness is None:
            return f"{self.instance.endpoint}: not read ({self.detail})"
        return f"{self.instance.endpoint}: {self.freshness}"


@dataclass(frozen=True)
class ClientView:
    """The group/version as each kube-apiserver instance's aggregated discovery shows it."""

    instances: tuple[InstanceView, ...]

    def read(self) -> tuple[InstanceView, ...]:
        return tuple(v for v in self.instances if v.freshness is not None)


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
