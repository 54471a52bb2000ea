"""Certificate expiry ahead of time, on the real control plane with the session operator: test
servers whose serving certificates end in 3 days and in a year, and a caBundle CA that ends soon."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import pki
from tests.cluster.harness import AggregatedAPI
from tests.cluster.kube import Kube, wait_conditions
from tests.cluster.operator import OperatorProcess
from tests.integration.test_operations import metric, scrape
from tests.integration.test_scenarios import register_healthy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OURS, OURS_DEGRADED = "apiservice-operator.io/Available", "apiservice-operator.io/Degraded"
OURS_TIMEOUT = 30
DAY = datetime.timedelta(days=1)


@pytest.fixture
def api_with(kube: Kube, namespace: str, tmp_path: Path, operator: OperatorProcess,
             test_ca: pki.KeyPair) -> Iterator[Callable[..., AggregatedAPI]]:
    made: list[AggregatedAPI] = []

    def make(*, serving_for: datetime.timedelta | None = None, ca: pki.KeyPair | None = None) -> AggregatedAPI:
        i = len(made)
        api = AggregatedAPI(kube, namespace, f"api{i}", f"{namespace}-{i}.expiry.example.com", "v1", tmp_path,
                            ca or test_ca)
        made.append(api)
        api.start_servers(1, valid_for=serving_for)
        register_healthy(api)
        return api

    yield make
    for api in made:
        api.remove()


def test_a_serving_certificate_ending_in_3_days_degrades_and_one_ending_in_a_year_does_not(
    api_with: Callable[..., AggregatedAPI], operator_port: int,
) -> None:
    soon, later = api_with(serving_for=3 * DAY), api_with(serving_for=365 * DAY)
    found = wait_conditions(soon, {OURS: ("True", "Passed"), OURS_DEGRADED: ("True", "CertificateExpiring")},
                            OURS_TIMEOUT, messages={OURS_DEGRADED: r"ends in [23] days .*serves CN=api0[.]"})
    assert soon.servers[0].address in found[OURS_DEGRADED]["message"]
    wait_conditions(later, {OURS: ("True", "Passed"), OURS_DEGRADED: ("False", "AsExpected")}, OURS_TIMEOUT,
                    messages={OURS_DEGRADED: "the earliest certificate ends 20"})
    text = scrape(operator_port)
    ends = metric(text, "apiservice_operator_certificate_expiry_timestamp_seconds", name=soon.name)
    assert ends is not None and 2 * 86400 < ends - time.time() <= 3 * 86400, ends


def test_a_cabundle_ca_ending_soon_degrades_naming_the_bundle(api_with: Callable[..., AggregatedAPI]) -> None:
    short_ca = pki.make_ca("short-lived-ca", valid_for=5 * DAY)
    api = api_with(ca=short_ca)
    wait_conditions(api, {OURS: ("True", "Passed"), OURS_DEGRADED: ("True", "CertificateExpiring")}, OURS_TIMEOUT,
                    messages={OURS_DEGRADED: "spec.caBundle holds CN=short-lived-ca"})
