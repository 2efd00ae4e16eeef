"""Schedulers of several processes on one PostgreSQL store, played by several Scheduler
objects (each with a store of its own) in one event loop: what only a shared store shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from bot.jobs.scheduler import Scheduler
from bot.jobs.store import Job, JobStore
from tests.harness import wait_for
from tests.scheduler_doubles import MemoryBackend, RecordingEvents, new_job, scheduler_for

LEASE = 0.9  # a heartbeat every 0.3 s


@dataclass
class Process:
    store: JobStore
    backend: MemoryBackend
    events: RecordingEvents
    scheduler: Scheduler
    shares: list[float]


@asynccontextmanager
async def process(url: str, **options: Any) -> AsyncIterator[Process]:
    store = await JobStore.open(url)
    backend, events, shares = MemoryBackend(), RecordingEvents(), []
    scheduler = scheduler_for(
        store, backend, events, lease_seconds=LEASE, on_poll_share=shares.append, **options
    )
    await scheduler.start()
    try:
        yield Process(store, backend, events, scheduler, shares)
    finally:
        backend.release()
        await scheduler.close()
        await store.close()


@asynccontextmanager
async def two_held_processes(url: str, **options: Any) -> AsyncIterator[tuple[Process, Process]]:
    """Two processes on one database whose predictions wait until released."""
    async with process(url, **options) as a, process(url, **options) as b:
        a.backend.hold()
        b.backend.hold()
        yield a, b


async def submitted(scheduler: Scheduler, user_id: int) -> Job:
    job = await scheduler.submit(new_job(user_id=user_id))
    assert isinstance(job, Job), job
    return job


async def test_a_process_that_stalls_past_its_lease_leaves_the_job_to_the_one_that_took_it(
    pg_url: str,
) -> None:
    async with two_held_processes(pg_url, max_concurrent=1) as (a, b):
        job = await submitted(a.scheduler, user_id=1)
        # whichever process claimed it (any process runs any job) is the one that stalls
        await wait_for(lambda: a.backend.creates or b.backend.creates, 5)
        stuck, other = (a, b) if a.backend.creates else (b, a)
        await wait_for(lambda: _recorded(stuck.store, job.id), 5)
        stalled = asyncio.Event()
        renew = stuck.store.renew_leases

        async def stalled_renew(owner: str, seconds: float) -> set[int]:
            await stalled.wait()  # its heartbeat hangs (a stalled process) ...
            return await renew(owner, seconds)

        stuck.store.renew_leases = stalled_renew  # type: ignore[method-assign]
        # ... its lease runs out; the other takes the job over and resumes the same prediction
        await wait_for(lambda: other.backend.resumes == ["p1"], 5)
        stalled.set()  # it comes back: its renewal finds the job gone, so it lets it be
        await wait_for(lambda: not stuck.scheduler.running_count, 5)
        other.backend.release()
        stuck.backend.release()
        await wait_for(lambda: other.events.delivered == [job.id], 5)
        assert stuck.events.delivered == [] and stuck.events.failed == []
        assert stuck.backend.cancels == [] and other.backend.cancels == []  # it went on
        assert other.backend.creates == []  # resumed, never created twice
        stored = await other.store.get(job.id)
        assert stored is not None and stored.status == "delivered"
        assert stored.lease_owner == other.scheduler.owner


async def _recorded(store: JobStore, job_id: int) -> bool:
    job = await store.get(job_id)
    return job is not None and job.prediction_id is not None


async def test_a_process_that_lost_its_lease_cannot_record_or_deliver(pg_url: str) -> None:
    async with process(pg_url, max_concurrent=1) as a:
        a.backend.hold()
        job = await submitted(a.scheduler, user_id=1)
        await wait_for(lambda: _recorded(a.store, job.id), 5)
        assert await a.store.set_prediction(job.id, "p1", owner="someone-else") is False
        assert await a.store.mark_delivering(job.id, owner="someone-else") is False
        assert await a.store.mark_delivering(job.id, owner=a.scheduler.owner) is True


async def test_polls_are_shared_by_the_jobs_each_process_runs(pg_url: str) -> None:
    async with two_held_processes(pg_url, max_concurrent=4) as (a, b):
        for user in (1, 2, 3, 4):  # either process may claim each (NOTIFY wakes both)
            await submitted((a, b)[user % 2].scheduler, user_id=user)
        await wait_for(lambda: a.scheduler.running_count + b.scheduler.running_count == 4, 5)
        a.shares.clear()
        b.shares.clear()
        await wait_for(lambda: a.shares and b.shares, 5)
        mine_a, mine_b = a.scheduler.running_count, b.scheduler.running_count
        # each takes its own share of the running jobs (at least one job's worth)
        assert a.shares[-1] == max(mine_a, 1) / 4 and b.shares[-1] == max(mine_b, 1) / 4
        if mine_a and mine_b:
            assert a.shares[-1] + b.shares[-1] == 1.0


async def test_the_cap_is_global_and_the_next_job_starts_wherever_there_is_room(
    pg_url: str,
) -> None:
    async with two_held_processes(pg_url, max_concurrent=1) as (a, b):
        first = await submitted(a.scheduler, user_id=1)
        await wait_for(lambda: a.scheduler.running_count + b.scheduler.running_count == 1, 5)
        second = await submitted(b.scheduler, user_id=2)
        await asyncio.sleep(2 * LEASE)  # heartbeats and NOTIFYs later, nothing more runs
        assert a.scheduler.running_count + b.scheduler.running_count == 1
        assert [j.id for j in await b.scheduler.line()] == [second.id]
        a.backend.release()
        b.backend.release()

        async def both_delivered() -> bool:
            return await _statuses(a.store, first.id, second.id) == ["delivered", "delivered"]

        await wait_for(both_delivered, 10)


async def _statuses(store: JobStore, *ids: int) -> list[str]:
    jobs = [await store.get(job_id) for job_id in ids]
    return [job.status if job is not None else "missing" for job in jobs]


async def test_the_store_is_really_shared(pg_url: str) -> None:
    """The tests above mean something only if both stores see one database."""
    async with process(pg_url) as a, process(pg_url) as b:
        job = await submitted(a.scheduler, user_id=9)
        assert await b.store.get(job.id) is not None
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT COUNT(*) FROM jobs") == 1
    finally:
        await conn.close()
