"""A leader whose Lease renewal hangs steps down at its renew deadline, and no write it starts can
outlast the time a standby waits before taking the Lease. Fake time; the Lease calls are replaced at
the elector's own seam (no Kubernetes API here)."""

from __future__ import annotations

import asyncio

import pytest

from apiservice_operator.core.settings import Settings
from apiservice_operator.kube.leader import LeaderElector
from apiservice_operator.run.supervisor import LEASE_MARGIN, renew_deadline, write_deadline

pytestmark = pytest.mark.looptime


class HangingAfterFirst(LeaderElector):
    """Renews once, then every renewal hangs as on a frozen connection."""

    calls: int = 0

    async def _try_acquire_or_renew(self) -> bool:
        self.calls += 1
        if self.calls == 1:
            return True
        await asyncio.Event().wait()
        return True

    async def _release(self) -> None:
        return None


async def test_a_hung_renewal_ends_leadership_at_the_renew_deadline() -> None:
    elector = HangingAfterFirst(credentials=None, namespace="ns", name="lease", identity="me",  # type: ignore[arg-type]
                                lease_duration=15, renew_deadline=10, retry_period=2)
    task = asyncio.create_task(elector.run())
    loop = asyncio.get_running_loop()
    await elector.leading.wait()
    started = loop.time()
    assert elector.license() == pytest.approx(10, abs=0.01)
    await elector.not_leading.wait()
    assert loop.time() - started == pytest.approx(10, abs=0.2)  # not never, as before the deadline
    assert elector.license() == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_leaders_write_ends_before_a_standby_may_lead() -> None:
    settings = Settings(leader_election=True, lease_duration=15)
    # a write starts at the latest at the renew deadline and must be over, with a margin, before
    # lease_duration has passed since the last renewal
    assert renew_deadline(settings) + write_deadline(settings) + LEASE_MARGIN <= settings.lease_duration
    assert write_deadline(Settings()) == 10  # no Lease: only kube-apiserver's pace bounds it
