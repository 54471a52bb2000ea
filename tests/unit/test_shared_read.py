"""SharedRead: one read for every check already waiting, a new one for a check that began later."""

from __future__ import annotations

import asyncio

import pytest

from apiservice_operator.probing.shared import SharedRead

pytestmark = pytest.mark.looptime


async def test_checks_waiting_before_a_read_was_sent_share_it_and_a_later_one_gets_its_own() -> None:
    sent: list[float] = []
    shared: SharedRead[str] = SharedRead()
    loop = asyncio.get_running_loop()

    async def send() -> str:
        sent.append(loop.time())
        number = len(sent)
        await asyncio.sleep(1)
        return f"answer {number}"

    began = loop.time()
    reads = [shared.read("instances", began, send) for _ in range(100)]
    await asyncio.sleep(0.5)
    late = shared.read("instances", loop.time(), send)  # began waiting after the read went out
    answers = await asyncio.gather(*reads, late)
    assert answers[:100] == ["answer 1"] * 100 and answers[100] == "answer 2"
    assert len(sent) == 2


async def test_another_key_or_a_failed_read_is_never_joined() -> None:
    calls = 0
    shared: SharedRead[int] = SharedRead()

    async def fail() -> int:
        nonlocal calls
        calls += 1
        raise OSError("down")

    async def answer() -> int:
        nonlocal calls
        calls += 1
        return calls

    first = shared.read("a", 0.0, fail)
    with pytest.raises(OSError):
        await first
    assert await shared.read("a", 0.0, answer) == 2  # the failed one is not joined
    assert await shared.read("b", 0.0, answer) == 3  # another key: its own read
    cancelled = shared.read("c", 0.0, answer)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert await shared.read("c", 0.0, answer) == 4
