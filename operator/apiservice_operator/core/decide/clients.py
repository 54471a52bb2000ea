"""The verdict on the clients' view (DESIGN 10): where the endpoints and the path pass, is the
group/version Current in each kube-apiserver instance's aggregated discovery, and in its
/openapi/v3? Where it is not, the server's own answers say whether to blame the server or to wait
for kube-apiserver's cache (it refreshes within a minute). Pure."""

from __future__ import annotations

from apiservice_operator.core import certs
from apiservice_operator.core.clientview import (
    ClientView,
    Document,
    Freshness,
    InstanceView,
    OpenAPI,
    ServerAnswer,
    openapi_served,
)
from apiservice_operator.core.decide.wording import AWAITING, listed
from apiservice_operator.core.model import Condition, Status, Verdict

DISCOVERY_STALE = "DiscoveryStale"
OPENAPI_UNAVAILABLE = "OpenAPIUnavailable"
# kube-apiserver refreshes a group's discovery within a minute of a change, sooner after an error
# (0.5 s doubling to 1 min, kube-aggregator's handler_discovery.go), and re-reads OpenAPI each
# minute: until then it is not the server's fault
GRACE_SECONDS = 90.0
_CONSEQUENCE = ("kubectl cannot find its resources (\"the server doesn't have a resource type\") and every "
                "client-go controller errors on it (\"stale GroupVersion discovery\"): namespace deletion and "
                "garbage collection stall")
_FIX = ("kube-apiserver fills its aggregated discovery from the server's root /apis (Accept "
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList) within 5 s: a 503 or no answer "
        "there makes it Stale, a v2 document without this group/version leaves it listed without resources")
_OPENAPI_CONSEQUENCE = ("kubectl explain, client-side validation and other schema-aware clients fail for it")
_OPENAPI_FIX = ("kube-apiserver reads the server's /openapi/v3 (/openapi/v2 where v3 answers 404); any other "
                "failure leaves the group/version out of its /openapi/v3")
_WORDS = {
    Freshness.STALE: "Stale",
    Freshness.MISSING: "missing",
    Freshness.EMPTY: "listed without the resources its server serves",
}


def counts(view: ClientView) -> str:
    """How many instances show it right: the DISCOVERY column of `kubectl apiservices -o wide`
    reads "aggregated discovery Current in N/M instances" from our messages. Discovery only: OpenAPI
    lists a new group/version seconds after discovery does, and a message that changes then is one
    more status write for every APIService (its own Degraded says where OpenAPI fails)."""
    read = view.read()
    if not read:
        return ""
    current = sum(1 for v in read if v.freshness is Freshness.CURRENT)
    return f"aggregated discovery Current in {current}/{len(read)} instances"


def _list(views: list[InstanceView]) -> str:
    return listed([(v.instance.endpoint, f"{v.instance.endpoint}: {_WORDS.get(v.freshness, '')}")
                   for v in views if v.freshness is not None])


def _list_openapi(views: list[InstanceView]) -> str:
    return listed([(v.instance.endpoint, f"{v.instance.endpoint}: {v.openapi_detail or v.openapi}")
                   for v in views if v.openapi is not None])


def _own(answers: list[ServerAnswer]) -> str:
    return "; ".join(a.describe() for a in answers)


def conclude_clients(available: Verdict, degraded: Verdict, view: ClientView, since: str, now: str,
                     prior_available: Condition | None = None,
                     prior_degraded: Condition | None = None) -> tuple[Verdict, Verdict]:
    """Where the server's own answer shows the fault (a 503, no answer within 5 s, a v2 document
    without the group/version), the verdict is at once. Where it answers as kube-apiserver needs,
    kube-apiserver's cache is behind: AwaitingKubeAPIServer, for GRACE_SECONDS at most (`prior_*`,
    our conditions before this check, say since when). Without the server's answer, `since` (when
    kube-apiserver's own Available last changed: a new APIService, a recovery) gives the same grace."""
    if available.status is not Status.TRUE or available.reason != "Passed":
        return available, degraded  # the hop that breaks first names the verdict
    if degraded.status is Status.TRUE and degraded.reason in ("InstanceUnreachable", "InstanceFailing"):
        # an instance both cut and stale: the path is the hop that comes first, and it holds still
        # while kube-apiserver's own Available flips as its instances overwrite it (kubernetes#111890),
        # which would otherwise restart the grace below at every flip
        return available, degraded
    read = view.read()
    bad = [v for v in read if v.freshness is not Freshness.CURRENT]
    if bad:
        return _discovery(available, degraded, view, bad, since, now, prior_available, prior_degraded)
    summary = counts(view)
    if summary:
        available = Verdict(available.status, available.reason, f"{available.message}; {summary}")
    return available, _openapi(degraded, view, since, now, prior_degraded)


def _discovery(available: Verdict, degraded: Verdict, view: ClientView, bad: list[InstanceView], since: str,
               now: str, prior_available: Condition | None,
               prior_degraded: Condition | None) -> tuple[Verdict, Verdict]:
    read = view.read()
    every = len(bad) == len(read)
    own = view.answer(Document.APIS)
    if own is None and _within_grace(since, now):
        # without the server's own answer, a change within the last minute may be all it is
        return (Verdict(Status.UNKNOWN, AWAITING,
                        f"{available.message}; kube-apiserver's aggregated discovery has not caught up yet "
                        f"({_list(bad)}): it refreshes within a minute of a change"),
                Verdict(Status.UNKNOWN, AWAITING, "cannot tell yet"))
    lag = ""
    if own is not None and own.serves:
        # the server answers as kube-apiserver needs now: its cache is behind (a repair within the
        # last minute), for a while; past the grace that is no longer a lag worth waiting for
        waited = prior_available if every else prior_degraded
        if not _waited_out(waited, now):
            words = (f"kube-apiserver's aggregated discovery has not caught up with its server yet ({_list(bad)}), "
                     f"though its server's own {own.describe()}: it refreshes within a minute")
            if every:
                return (Verdict(Status.UNKNOWN, AWAITING, f"{available.message}; {words}"),
                        Verdict(Status.UNKNOWN, AWAITING, "cannot tell yet"))
            return available, Verdict(Status.UNKNOWN, AWAITING, words)
        lag = f" (over {GRACE_SECONDS:g} s though its server answers as it needs)"
    server = f" Its server's own {own.describe()}." if own is not None else ""
    where = f"{len(bad)}/{len(read)} kube-apiserver instances"
    if every:
        return (Verdict(Status.FALSE, DISCOVERY_STALE,
                        f"served, but clients cannot use it: kube-apiserver's aggregated discovery (what kubectl "
                        f"and controllers read) has it {_list(bad)}, on {where}{lag} ({counts(view)}): "
                        f"{_CONSEQUENCE}.{server} {_FIX}"),
                Verdict(Status.FALSE, "Unavailable", f"not available: {DISCOVERY_STALE}"))
    return available, Verdict(
        Status.TRUE, DISCOVERY_STALE,
        f"the aggregated discovery of {where} has it {_list(bad)}{lag} ({counts(view)}): clients of those "
        f"instances cannot use it ({_CONSEQUENCE}).{server} {_FIX}")


def _openapi(degraded: Verdict, view: ClientView, since: str, now: str, prior: Condition | None) -> Verdict:
    read = view.openapi_read()
    bad = [v for v in read if v.openapi is not OpenAPI.LISTED]
    answers = [a for a in (view.answer(Document.OPENAPI_V3), view.answer(Document.OPENAPI_V2)) if a is not None]
    if not bad or degraded.status is Status.TRUE or (not answers and _within_grace(since, now)):
        return degraded  # a Degraded already said names an earlier hop, or kube-apiserver may still be reading it
    server = f" Its server's own {_own(answers)}." if answers else ""
    lag = ""
    if answers and openapi_served(answers):
        if _within_grace(since, now):
            return degraded  # a new APIService: kube-apiserver lists its OpenAPI within seconds, no news
        if not _waited_out(prior, now):
            return Verdict(Status.UNKNOWN, AWAITING,
                           f"kube-apiserver's /openapi/v3 has not caught up with its server yet "
                           f"({_list_openapi(bad)}), though its server's own {_own(answers)}: "
                           "it re-reads within a minute")
        lag = f" (over {GRACE_SECONDS:g} s though its server serves it)"
    return Verdict(Status.TRUE, OPENAPI_UNAVAILABLE,
                   f"its OpenAPI is not served by {len(bad)}/{len(read)} kube-apiserver instances "
                   f"({_list_openapi(bad)}){lag}: {_OPENAPI_CONSEQUENCE}.{server} {_OPENAPI_FIX}")


def _waited_out(prior: Condition | None, now: str) -> bool:
    """We have said AwaitingKubeAPIServer for the whole grace already."""
    if prior is None or prior.status is not Status.UNKNOWN or prior.reason != AWAITING:
        return False
    return not _within_grace(prior.last_transition_time, now)


def _within_grace(since: str, now: str) -> bool:
    try:
        return bool(since) and -certs.seconds_left(since, now) < GRACE_SECONDS
    except ValueError:  # not RFC 3339: no grace to give
        return False
