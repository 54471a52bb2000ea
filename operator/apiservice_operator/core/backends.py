"""Backends that change hands, in pure terms: an APIService's spec.service moved (or its
insecureSkipTLSVerify turned on), who moved it (managedFields), and what that is worth saying.

Only one APIService can serve metrics.k8s.io, custom.metrics.k8s.io or external.metrics.k8s.io:
installing KEDA or prometheus-adapter silently repoints the other's (kedacore/keda#470, #2093,
kubernetes-sigs/prometheus-adapter#561), and the HPAs of the old backend's users stop scaling on
metrics that no longer exist. A change of caBundle alone is no change of hands: cert-manager's
cainjector rotates it routinely. Time is never read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from apiservice_operator.core.consumers import is_metrics_group
from apiservice_operator.core.transitions import EventSpec

REASON = "BackendChanged"


@dataclass(frozen=True)
class Backend:
    """Where kube-apiserver sends the group/version; service None for a Local APIService."""

    service: tuple[str, str, int] | None  # (namespace, name, port)
    insecure: bool = False

    def describe(self) -> str:
        if self.service is None:
            return "Local (kube-apiserver itself)"
        namespace, name, port = self.service
        return f"Service {namespace}/{name}:{port}"


@dataclass(frozen=True)
class BackendChange:
    old: Backend
    new: Backend
    manager: str | None  # the field manager that owns the changed field now
    operation: str | None  # Update or Apply
    at: str | None  # managedFields' time of that manager's last change
    event: EventSpec


def backend_of(apiservice: Mapping[str, Any]) -> Backend:
    spec = apiservice.get("spec") or {}
    ref = spec.get("service")
    service = None
    if ref:
        service = (str(ref.get("namespace") or ""), str(ref.get("name") or ""), int(ref.get("port") or 443))
    return Backend(service, bool(spec.get("insecureSkipTLSVerify")))


def changed_by(apiservice: Mapping[str, Any], leaves: Iterable[tuple[str, ...]]) -> tuple[str | None, str | None,
                                                                                          str | None]:
    """(manager, operation, time) of the managedFields entry that owns one of the changed `leaves`
    (paths under spec, e.g. ("service", "name")) and changed last; Nones where managedFields do not
    say. A manager that only co-owns the parent (an Apply that set the rest of spec.service) did not
    make the change: after `kubectl patch` of the name, helm still owns its namespace and port."""
    wanted = [tuple(f"f:{part}" for part in leaf) for leaf in leaves]
    best: tuple[str, str | None, str | None] | None = None
    for entry in (apiservice.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(entry, Mapping):
            continue
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if not any(_owns(spec, path) for path in wanted):
            continue
        at = str(entry.get("time") or "")
        if best is None or at > best[0]:  # RFC 3339 in UTC: the string order is the time order
            best = (at, entry.get("manager"), entry.get("operation"))
    if best is None:
        return None, None, None
    return best[1], best[2], best[0] or None


def _owns(fields: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(fields, Mapping) or part not in fields:
            return False
        fields = fields[part]
    return True


def _changed_leaves(old: Backend, new: Backend) -> list[tuple[str, ...]]:
    leaves: list[tuple[str, ...]] = []
    if old.service is None or new.service is None:
        if old.service != new.service:
            leaves.append(("service",))
    else:
        leaves += [("service", field) for field, a, b in zip(("namespace", "name", "port"), old.service, new.service,
                                                              strict=True) if a != b]
    if new.insecure and not old.insecure:
        leaves.append(("insecureSkipTLSVerify",))
    return leaves


def backend_change(name: str, old: Backend, apiservice: Mapping[str, Any]) -> BackendChange | None:
    """What to say now that `apiservice` is seen with a backend other than `old`, the one it was last
    seen with; None when no backend changed (caBundle alone, or nothing) or the TLS check only
    turned on again. The caller passes no `old` it does not know (after a restart or a failover)."""
    new = backend_of(apiservice)
    moved = old.service != new.service
    insecure_on = new.insecure and not old.insecure
    if not moved and not insecure_on:
        return None
    manager, operation, at = changed_by(apiservice, _changed_leaves(old, new))
    group = str((apiservice.get("spec") or {}).get("group") or "")
    by = ""
    if manager:
        by = f" by {manager}" + (f" ({', '.join(x for x in (operation, at) if x)})" if operation or at else "")
    parts = []
    if moved:
        parts.append(f"{name} moved from {old.describe()} to {new.describe()}{by}")
    if insecure_on:
        parts.append(f"{name} turned insecureSkipTLSVerify on{'' if moved else by}: kube-apiserver no longer "
                     f"verifies its backend's serving certificate")
    message = "; ".join(parts)
    singleton = moved and is_metrics_group(group)
    if singleton:
        message += (f". Only one backend can serve {group}: whatever served it through {old.describe()} no "
                    f"longer does, and the HorizontalPodAutoscalers and tools that read it get the new one's metrics "
                    f"or none")
    kind = "Warning" if singleton else "Normal"
    return BackendChange(old, new, manager, operation, at, EventSpec(kind, REASON, message))
