"""Certificate expiry, known before the outage: a served leaf or a caBundle CA that ends within the
warning makes an otherwise healthy API Degraded, naming it. Plain data, no cluster."""

from __future__ import annotations

import dataclasses

import pytest

from apiservice_operator.core.decide import decide
from apiservice_operator.core.model import Certificate, ProbeResult, Resolution, Target
from tests.unit.test_userpath import BUDGET, EP, NOW, PLAN, TYPES, timeout

SOON, LATER = "2026-01-04T12:00:00Z", "2027-01-01T12:00:00Z"  # NOW + 3 days, + a year


def _cert(ends: str, subject: str = "CN=demo.default.svc") -> Certificate:
    return Certificate(subject, "CN=demo-ca", ends, ("demo.default.svc",))


@pytest.mark.parametrize(("served", "cas", "degraded", "has"), [
    ((_cert(SOON),), (), ("True", "CertificateExpiring"),
     ("ends in 2 days (2026-01-04T12:00:00Z)", "10.0.0.1:8443 serves CN=demo.default.svc")),
    ((_cert(LATER),), (), ("False", "AsExpected"), ("the earliest certificate ends 2027-01-01T12:00:00Z",)),
    ((_cert(LATER),), (_cert(SOON, "CN=demo-ca"),), ("True", "CertificateExpiring"),
     ("spec.caBundle holds CN=demo-ca, ending 2026-01-04T12:00:00Z",)),
    ((), (), ("False", "AsExpected"), ()),
], ids=["served-leaf-ends-in-3-days", "a-year-is-fine", "cabundle-ca-ends-soon", "nothing-known"])
def test_a_certificate_ending_soon_degrades_a_healthy_api_and_names_it(
    served: tuple[Certificate, ...], cas: tuple[Certificate, ...], degraded: tuple[str, str], has: tuple[str, ...],
) -> None:
    plan = dataclasses.replace(PLAN, ca_certificates=cas)
    now = "2026-01-01T13:00:00Z"
    available, got = decide(Resolution(plan=plan), [ProbeResult(EP, True, 0.01, None, "ok", 200, "", served)], [],
                            now, TYPES, BUDGET)
    assert (str(available.status), available.reason) == ("True", "Passed")
    assert (str(got.status), got.reason) == degraded, got.message
    for part in has:
        assert part in got.message


def test_a_failure_on_degraded_outranks_an_expiring_certificate() -> None:
    two = dataclasses.replace(PLAN, targets=(EP, Target("10.0.0.2", 8443)))
    probes = [ProbeResult(EP, True, 0.01, None, "ok", 200, "", (_cert(SOON),)), timeout(Target("10.0.0.2", 8443))]
    _, degraded = decide(Resolution(plan=two), probes, [], NOW, TYPES, BUDGET)
    assert degraded.reason == "PartialFailure"
