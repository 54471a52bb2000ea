"""Blast radius, in pure terms: which namespaces an unavailable aggregated API keeps from being
deleted. The namespace controller cannot finish a deletion without complete discovery (it must
find every resource to delete: kubernetes/kubernetes#66932 made this deliberate), and says so in
the namespace's status: condition NamespaceDeletionDiscoveryFailure, whose message names each
group/version that failed, e.g. "Discovery failed for some groups, 1 failing: unable to retrieve
the complete list of server APIs: metrics.k8s.io/v1beta1: stale GroupVersion discovery: ...".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from apiservice_operator.core.model import Obj

CONDITION = "NamespaceDeletionDiscoveryFailure"
MAX_NAMED = 10
# "<group>/<version>: " as discovery's ErrGroupDiscoveryFailed prints each failed group/version
_BLOCKING = re.compile(r"blocking deletion of (\d+) namespaces?")
_GROUP_VERSION = re.compile(r"(?<![\w./-])([a-z0-9]([-a-z0-9.]*[a-z0-9])?/v[0-9][a-z0-9]*):")


def blocking_group_versions(namespace: Mapping[str, Any]) -> tuple[str, ...]:
    """The group/versions a Terminating namespace waits on; () for any other namespace."""
    status = namespace.get("status") or {}
    if status.get("phase") != "Terminating":
        return ()
    for cond in status.get("conditions") or []:
        if cond.get("type") == CONDITION and cond.get("status") == "True":
            return tuple(sorted({m.group(1) for m in _GROUP_VERSION.finditer(cond.get("message") or "")}))
    return ()


def group_version(apiservice: Obj) -> str:
    spec = apiservice.get("spec") or {}
    group, version = spec.get("group") or "", spec.get("version") or ""
    return f"{group}/{version}" if group else version


def apiservice_name(group_version: str) -> str:
    """The APIService that serves a group/version: <version>.<group>."""
    group, _, version = group_version.rpartition("/")
    return f"{version}.{group}" if group else version


def name_some(names: Sequence[str], noun: str) -> str:
    """"2 <noun>s: a, b", sorted; past MAX_NAMED the rest as "and N more" (a message stays short)."""
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}: {shown}"


def describe_blocked(namespaces: Sequence[str]) -> str:
    """The words added to an unavailable API's message; "" when it blocks nothing."""
    return f"blocking deletion of {name_some(namespaces, 'namespace')}" if namespaces else ""


def blocked_count(message: str) -> int:
    """How many namespaces a message of ours says the API blocks (0 when it says none)."""
    found = _BLOCKING.search(message)
    return int(found.group(1)) if found else 0
