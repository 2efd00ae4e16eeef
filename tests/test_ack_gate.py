"""AckGate: follow-up work waits for a burst's acknowledgements; no GC pass while they go out."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bot.chat.acks import AckGate


async def test_gc_waits_while_acknowledgements_are_in_flight() -> None:
    gate = AckGate()
    assert gc.isenabled()
    release = asyncio.Event()

    async def defer() -> None:
        async with gate.acknowledging():
            await release.wait()

    tasks = [asyncio.create_task(defer()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not gc.isenabled()
    release.set()
    await asyncio.gather(*tasks)
    assert gc.isenabled()


async def test_an_exception_still_reenables_gc() -> None:
    gate = AckGate()
    try:
        async with gate.acknowledging():
            raise RuntimeError("the defer failed")
    except RuntimeError:
        pass
    assert gc.isenabled()


async def test_follow_up_waits_until_the_burst_is_quiet() -> None:
    gate = AckGate()
    loop = asyncio.get_running_loop()
    last_ack_done = 0.0

    async def burst() -> None:
        nonlocal last_ack_done
        for _ in range(5):  # acknowledgements trickling in 10 ms apart
            async with gate.acknowledging():
                await asyncio.sleep(0.005)
            last_ack_done = loop.time()
            await asyncio.sleep(0.005)

    task = asyncio.create_task(burst())
    await asyncio.sleep(0)
    await gate.wait_until_quiet()
    assert task.done()
    assert loop.time() - last_ack_done >= AckGate.QUIET * 0.9


async def test_waiting_is_bounded() -> None:
    gate = AckGate()
    async with gate.acknowledging():
        loop = asyncio.get_running_loop()
        start = loop.time()
        await gate.wait_until_quiet(limit=0.05)
        assert 0.04 <= loop.time() - start < 0.5


async def test_steady_traffic_cannot_hold_gc_off_for_long(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = AckGate()
    monkeypatch.setattr(AckGate, "MAX_GC_HOLD", 0.05)
    release = asyncio.Event()

    async def defer() -> None:
        async with gate.acknowledging():
            await release.wait()

    first = asyncio.create_task(defer())
    await asyncio.sleep(0)
    assert not gc.isenabled()
    await asyncio.sleep(0.06)
    second = asyncio.create_task(defer())  # overlaps the first: no quiet gap since
    await asyncio.sleep(0)
    assert gc.isenabled()
    release.set()
    await asyncio.gather(first, second)
    assert gc.isenabled()
