"""The verdict on the clients' view (DESIGN 10): where the endpoints and the path pass, is the
group/version Current in each kube-apiserver instance's aggregated discovery? Pure."""

from __future__ import annotations

from apiservice_operator.core import certs
from apiservice_operator.core.clientview import ClientView, Freshness, InstanceView
from apiservice_operator.core.decide.wording import AWAITING, listed
from apiservice_operator.core.model import Status, Verdict

DISCOVERY_STALE = "DiscoveryStale"
# kube-apiserver refreshes a group's discovery within a minute of a change, sooner after an error
# (0.5 s doubling to 1 min, kube-aggregator's handler_discovery.go): until then it is not the server's fault
GRACE_SECONDS = 90.0
_CONSEQUENCE = ("kubectl cannot find its resources (\"the server doesn't have a resource type\") and every "
                "client-go controller errors on it (\"stale GroupVersion discovery\"): namespace deletion and "
                "garbage collection stall")
_FIX = ("kube-apiserver fills its aggregated discovery from the server's root /apis (Accept "
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList) within 5 s: a 503 or no answer "
        "there makes it Stale, a v2 document without this group/version leaves it listed without resources")
_WORDS = {
    Freshness.STALE: "Stale",
    Freshness.MISSING: "missing",
    Freshness.EMPTY: "listed without the resources its server serves",
}


def _list(views: list[InstanceView]) -> str:
    return listed([(v.instance.endpoint, f"{v.instance.endpoint}: {_WORDS.get(v.freshness, '')}")
                   for v in views if v.freshness is not None])


def conclude_clients(available: Verdict, degraded: Verdict, view: ClientView, since: str,
                     now: str) -> tuple[Verdict, Verdict]:
    """`since`: when kube-apiserver's own Available last changed (a new APIService, a recovery): its
    discovery may lag that by up to a minute, which is no fault of the server."""
    if available.status is not Status.TRUE or available.reason != "Passed":
        return available, degraded  # the hop that breaks first names the verdict
    read = view.read()
    bad = [v for v in read if v.freshness is not Freshness.CURRENT]
    if not bad:
        return available, degraded
    if degraded.status is Status.TRUE and degraded.reason in ("InstanceUnreachable", "InstanceFailing"):
        # an instance both cut and stale: the path is the hop that comes first, and it holds still
        # while kube-apiserver's own Available flips as its instances overwrite it (kubernetes#111890),
        # which would otherwise restart the grace below at every flip
        return available, degraded
    if _within_grace(since, now):
        return (Verdict(Status.UNKNOWN, AWAITING,
                        f"{available.message}; kube-apiserver's aggregated discovery has not caught up yet "
                        f"({_list(bad)}): it refreshes within a minute of a change"),
                Verdict(Status.UNKNOWN, AWAITING, "cannot tell yet"))
    where = f"{len(bad)}/{len(read)} kube-apiserver instances"
    if len(bad) == len(read):
        return (Verdict(Status.FALSE, DISCOVERY_STALE,
                        f"served, but clients cannot use it: kube-apiserver's aggregated discovery (what kubectl "
                        f"and controllers read) has it {_list(bad)}, on {where}: {_CONSEQUENCE}. {_FIX}"),
                Verdict(Status.FALSE, "Unavailable", f"not available: {DISCOVERY_STALE}"))
    return available, Verdict(
        Status.TRUE, DISCOVERY_STALE,
        f"the aggregated discovery of {where} has it {_list(bad)}: clients of those instances cannot use it "
        f"({_CONSEQUENCE}). {_FIX}")


def _within_grace(since: str, now: str) -> bool:
    try:
        return bool(since) and -certs.seconds_left(since, now) < GRACE_SECONDS
    except ValueError:  # not RFC 3339: no grace to give
        return False
