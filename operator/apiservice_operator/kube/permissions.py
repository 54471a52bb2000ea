"""At start-up and then every minute, ask the API (SelfSubjectAccessReview, which every
authenticated identity may create) whether we hold each permission we use. A missing one is
logged naming the verb and resource, and keeps /readyz failing, instead of silently doing nothing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kubernetes_asyncio import client

from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Permission:
    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        res += f".{self.group}" if self.group else ""
        where = f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"verb={self.verb} resource={res}{where}"


def needed(events_namespace: str, lease_namespace: str | None, lease_name: str,
           probe_identity: tuple[str, str] | None = None) -> list[Permission]:
    perms = [Permission(v, g, r) for g, r in (("apiregistration.k8s.io", "apiservices"), ("", "services"),
                                               ("discovery.k8s.io", "endpointslices"))
             for v in ("get", "list", "watch")]
    perms.append(Permission("patch", "apiregistration.k8s.io", "apiservices", "status"))
    # Terminating namespaces held up by an unavailable API (blast.py)
    perms += [Permission(v, "", "namespaces") for v in ("list", "watch")]
    # the HorizontalPodAutoscalers a failing metrics API stalls, listed while one is (consumers.py)
    perms.append(Permission("list", "autoscaling", "horizontalpodautoscalers"))
    perms += [Permission(v, "", "events", namespace=events_namespace) for v in ("create", "patch")]
    if lease_namespace:
        perms.append(Permission("create", "coordination.k8s.io", "leases", namespace=lease_namespace))
        perms += [Permission(v, "coordination.k8s.io", "leases", namespace=lease_namespace, name=lease_name)
                  for v in ("get", "update")]
    if probe_identity:
        namespace, name = probe_identity
        perms.append(Permission("create", "", "serviceaccounts", "token", namespace=namespace, name=name))
    return perms


async def missing_permissions(credentials: Credentials, perms: list[Permission]) -> list[Permission]:
    assert credentials.api is not None
    api = client.AuthorizationV1Api(credentials.api)
    missing = []
    for p in perms:
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=p.verb, group=p.group, resource=p.resource, subresource=p.subresource or None,
                namespace=p.namespace or None, name=p.name or None)))
        result = await api.create_self_subject_access_review(review, _request_timeout=API_TIMEOUT)
        if not (result.status and result.status.allowed):
            missing.append(p)
    return missing


async def keep_checking(credentials: Credentials, perms: list[Permission], problems: dict[str, str]) -> None:
    """Checks `perms` every minute (every 10 s while some are missing) and says what is missing in
    `problems` (/readyz) and the log."""
    while True:
        try:
            missing = await missing_permissions(credentials, perms)
        except Exception as exc:
            log.warning("permission check failed: %r", exc)
            missing = None
        if missing:
            text = "; ".join(p.describe() for p in missing)
            if problems.get("rbac") != text:
                for p in missing:
                    log.error("missing permission: %s (grant it to the operator's ServiceAccount: "
                              "see manifests/rbac.yaml)", p.describe())
            problems["rbac"] = text
        elif missing is not None and "rbac" in problems:
            del problems["rbac"]
            log.info("all permissions present again")
        await asyncio.sleep(60 if not missing else 10)
