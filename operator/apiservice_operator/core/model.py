"""Plain data passed between the stages: resolution, probe results, conditions. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# Kubernetes objects as the API returns them (decoded JSON).
Obj = dict[str, Any]

DEFAULT_CONDITION_PREFIX = "apiservice-operator.io"
DEFAULT_PROBE_TIMEOUT = 5.0

# The resource we watch and write, by full group, version and plural: without a group kopf scans every
# API group at start-up, and a broken aggregated API (what we watch for) would then stall our own start.
APISERVICES = ("apiregistration.k8s.io", "v1", "apiservices")
GROUP, VERSION, PLURAL = APISERVICES
FIELD_MANAGER = "apiservice-operator"
# status writes at once (the controller's slots), and as many connections kept for them: with
# pool.py's default of 16 kept, a start's burst of 1,000 first verdicts closed and reopened
# connections all along (TLS handshakes 9 % of the start's CPU at N = 1,000, make bench)
WRITES_IN_FLIGHT = 64


class Status(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ErrorKind(enum.StrEnum):
    """Why one endpoint failed its probe; also the label of the probe-error metric."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    HTTP_STATUS = "http_status"
    INVALID_DOCUMENT = "invalid_document"
    UNAUTHORIZED = "unauthorized"
    CONNECTION = "connection"


@dataclass(frozen=True)
class Target:
    """One address to send the discovery request to."""

    host: str  # an IP address, or a DNS name for ExternalName Services
    port: int

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Verdict:
    """A result reached without probing (or the reason probing cannot start)."""

    status: Status
    reason: str
    message: str


@dataclass(frozen=True)
class Certificate:
    """What a certificate says that matters to on-call: who, by whom, for what names, until when."""

    subject: str
    issuer: str
    not_after: str  # RFC 3339
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.subject} (issuer {self.issuer}, ends {self.not_after})"


@dataclass(frozen=True)
class ProbePlan:
    """Everything the prober needs, derived from the APIService, its Service and its slices."""

    targets: tuple[Target, ...]
    path: str  # /apis/<group>/<version>, or /api/<version> for the legacy core group
    group_version: str  # what the discovery document's groupVersion must say
    server_name: str  # the name the serving certificate must carry: <service>.<namespace>.svc
    ca_bundle: bytes | None
    insecure_skip_tls_verify: bool
    ca_certificates: tuple[Certificate, ...] = ()  # the caBundle's, for expiry


@dataclass(frozen=True)
class Resolution:
    """Exactly one of verdict (decided without a probe) or plan (go probe) is set."""

    verdict: Verdict | None = None
    plan: ProbePlan | None = None


@dataclass(frozen=True)
class ProbeResult:
    target: Target
    ok: bool
    latency: float  # seconds from the probe's start to the body's end (or the failure), less our loop's stalls
    error: ErrorKind | None = None
    detail: str = ""  # human-readable: "connection refused", "HTTP 500", ...
    status_code: int | None = None  # the HTTP status, where an answer came
    body: str = ""  # the start of a non-2xx answer's body: whoever refused says why there
    served: tuple[Certificate, ...] = ()  # what the server presented, where the handshake verified
    resources: tuple[str, ...] = ()  # a passing document's top-level resource names (the clients' view)

    def describe(self) -> str:
        return f"{self.target.endpoint}: {self.detail}"


@dataclass(frozen=True)
class Handshake:
    """One TCP connect and TLS handshake, unverified on purpose: to show what a server presents even
    when it fails verification (explain). The verdict never rests on it; the probe verifies."""

    tcp_seconds: float | None
    tls_seconds: float | None
    presented: tuple[Certificate, ...]
    error: str = ""


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str
    last_transition_time: str  # RFC 3339, as the API stores it

    def to_api(self) -> Obj:
        return {
            "type": self.type, "status": str(self.status), "reason": self.reason,
            "message": self.message, "lastTransitionTime": self.last_transition_time,
        }

    @classmethod
    def from_api(cls, obj: Obj) -> Condition:
        try:
            status = Status(obj.get("status", "Unknown"))
        except ValueError:
            status = Status.UNKNOWN
        return cls(
            type=str(obj.get("type", "")), status=status, reason=str(obj.get("reason", "")),
            message=str(obj.get("message", "")), last_transition_time=str(obj.get("lastTransitionTime", "")),
        )

    def same_state(self, other: Condition) -> bool:
        """Equal for the purpose of "write only when something changed"."""
        return (self.type, self.status, self.reason, self.message) == (
            other.type, other.status, other.reason, other.message)


@dataclass(frozen=True)
class ConditionTypes:
    """Our condition type names under one prefix (DESIGN 2: never the bare `Available`)."""

    prefix: str = DEFAULT_CONDITION_PREFIX
    available: str = field(init=False)
    degraded: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = self.prefix.strip().rstrip("/")
        if not prefix:
            raise ValueError(
                "the condition prefix must not be empty: plain `Available` belongs to kube-apiserver's "
                "availability controller, and writing it would make the two controllers fight")
        if "/" in prefix or not _is_dns_subdomain(prefix):
            raise ValueError(
                f"the condition prefix {self.prefix!r} must be a DNS subdomain such as "
                f"{DEFAULT_CONDITION_PREFIX!r} (condition types are `<prefix>/Available`)")
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "available", f"{prefix}/Available")
        object.__setattr__(self, "degraded", f"{prefix}/Degraded")

    @property
    def all(self) -> tuple[str, str]:
        return (self.available, self.degraded)


def _is_dns_subdomain(value: str) -> bool:
    if len(value) > 253:
        return False
    labels = value.split(".")
    return all(
        0 < len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()
        and all(c.isalnum() or c == "-" for c in label) and label == label.lower()
        for label in labels
    )


class WriteForbidden(RuntimeError):
    """kube-apiserver refused our status write (RBAC): /readyz says so until a write passes."""


class WriteFailed(RuntimeError):
    """A status write that did not land for another reason (throttled, a server error)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds kube-apiserver asked us to wait (429 / 503 Retry-After)


class WriteDeferred(WriteFailed):
    """Not sent: kube-apiserver is throttling our writes and another write is finding out whether it
    still does (check/writegate.py). The check ends; its APIService is checked again after the wait."""
