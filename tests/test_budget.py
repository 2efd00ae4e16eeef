"""Daily budgets and the cost estimate, over a real job database with an injected clock."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.chat import render
from bot.jobs.budget import DEFAULT_GPU_SECONDS_PER_AUDIO_SECOND, Budgets, BudgetUse
from bot.jobs.limits import Limits, Refusal
from bot.jobs.scheduler import Scheduler
from bot.jobs.store import Job, JobStore, NewJob
from tests.clock import START, Clock
from tests.scheduler_doubles import MemoryBackend, RecordingEvents
from tests.scheduler_doubles import new_job as scheduler_job

RATE = 0.01  # dollars per GPU second
_interaction_ids = iter(range(1, 1_000_000))


def new_job(
    *, guild_id: int | None = 7, user_id: int = 42, duration: int = 10, **fields: Any
) -> NewJob:
    request = {"prompt": "a loop", "duration": duration, "model_version": "large"}
    return NewJob(
        guild_id=guild_id,
        channel_id=8,
        user_id=user_id,
        interaction_id=next(_interaction_ids),
        application_id=9,
        token="token",
        token_expires_at=START + timedelta(minutes=15),
        request_json=json.dumps(request),
        **fields,
    )


async def finished(store: JobStore, cost: float, *, guild_id: int | None = 7) -> Job:
    """A delivered job that cost `cost` dollars."""
    job = await store.add(new_job(guild_id=guild_id, expected_cost=cost))
    await store.start(job.id)
    await store.record_result(job.id, seed=1, predict_time=cost / RATE, cost_estimate=cost)
    assert await store.deliver(job.id, message_id=1, channel_id=8)
    return job


def budgets(store: JobStore, clock: Clock, **caps: float) -> Budgets:
    return Budgets(store, cost_per_second=RATE, now=clock, **caps)


async def admitted(result: Job | Refusal) -> Job:
    assert isinstance(result, Job), result
    return result


async def refused(result: Job | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.reason == "budget"
    return result


# -- the estimate -------------------------------------------------------------------------


async def test_the_estimate_learns_from_history(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock)
    default = DEFAULT_GPU_SECONDS_PER_AUDIO_SECOND * 10 * RATE
    assert await checker.estimate("large", 10) == pytest.approx(default)

    for predict_time, seconds in [(30.0, 10), (50.0, 10)]:  # 4 GPU s per audio s
        job = await store.add(new_job(model_version="large", duration_seconds=seconds))
        await store.start(job.id)
        await store.record_result(job.id, seed=1, predict_time=predict_time, cost_estimate=0)
        await store.deliver(job.id, message_id=1, channel_id=8)

    assert await checker.estimate("large", 10) == pytest.approx(4.0 * 10 * RATE)
    assert await checker.estimate("stereo-large", 10) == pytest.approx(default)  # per model


async def test_the_estimate_uses_only_the_models_latest_jobs(store: JobStore) -> None:
    for predict_time in (100.0, 2.0, 4.0):  # the oldest is left out of a window of 2
        job = await store.add(new_job(model_version="large", duration_seconds=2.0))
        await store.start(job.id)
        await store.record_result(job.id, seed=1, predict_time=predict_time, cost_estimate=0)
    assert await store.gpu_seconds_per_audio_second("large", last=2) == pytest.approx(1.5)
    assert await store.gpu_seconds_per_audio_second("melody-large", last=2) is None


async def test_price_stores_the_estimate_on_the_job(store: JobStore, clock: Clock) -> None:
    priced = await budgets(store, clock).price(new_job(duration=12))
    job = await store.add(priced)
    assert (job.model_version, job.duration_seconds) == ("large", 12.0)
    assert job.expected_cost == pytest.approx(12 * RATE)


# -- the arithmetic ---------------------------------------------------------------------------


async def test_spend_counts_finished_queued_and_running_jobs(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock, guild_budget=1.0)
    await finished(store, 0.5)
    await store.add(new_job(expected_cost=0.3))  # queued
    running = await store.add(new_job(expected_cost=0.15))
    await store.start(running.id)
    await store.add(new_job(guild_id=99, expected_cost=5.0))  # another server's
    assert await store.committed_spend(START - timedelta(hours=1), guild_id=7) == pytest.approx(
        0.95
    )

    too_much = await refused(await checker.admit(new_job(expected_cost=0.1), store.add))
    assert too_much.message == (
        "This server's budget for today is nearly used up (a shorter track may still fit); "
        "it resets at 00:00 UTC (in 3 h 12 min)."
    )
    await admitted(await checker.admit(new_job(expected_cost=0.05), store.add))  # exactly fits
    full = await refused(await checker.admit(new_job(expected_cost=0.01), store.add))
    assert full.message.startswith("This server's budget for today is used up; it resets at")
    assert full.retry_at == datetime(2025, 3, 15, tzinfo=UTC)


async def test_a_running_job_counts_its_recorded_cost_once_known(
    store: JobStore, clock: Clock
) -> None:
    running = await store.add(new_job(expected_cost=0.9))
    await store.start(running.id)
    since = START - timedelta(hours=1)
    assert await store.committed_spend(since) == pytest.approx(0.9)
    await store.record_result(running.id, seed=1, predict_time=20, cost_estimate=0.2)
    assert await store.committed_spend(since) == pytest.approx(0.2)


async def test_the_day_ends_at_midnight_utc(store: JobStore, clock: Clock) -> None:
    clock.now = datetime(2025, 3, 14, 23, 59, 30, tzinfo=UTC)
    checker = budgets(store, clock, guild_budget=1.0)
    await finished(store, 0.9)
    refusal = await refused(await checker.admit(new_job(expected_cost=0.2), store.add))
    assert refusal.message.endswith("it resets at 00:00 UTC (in 30 seconds).")

    clock.now = datetime(2025, 3, 15, 0, 0, 0, tzinfo=UTC)
    await admitted(await checker.admit(new_job(expected_cost=0.2), store.add))


async def test_dm_jobs_count_only_against_the_bot_budget(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock, guild_budget=0.1, bot_budget=1.0)
    await admitted(await checker.admit(new_job(guild_id=None, expected_cost=0.5), store.add))
    await admitted(await checker.admit(new_job(expected_cost=0.1), store.add))  # the server's
    refusal = await refused(
        await checker.admit(new_job(guild_id=None, expected_cost=0.5), store.add)
    )
    assert refusal.message.startswith("The bot's budget for today is nearly used up")
    assert [use.scope for use in await checker.usage(None)] == ["bot"]


async def test_a_servers_own_budget_replaces_the_default(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock, guild_budget=10.0)
    await refused(await checker.admit(new_job(expected_cost=0.5), store.add, guild_budget=0.2))
    await admitted(await checker.admit(new_job(expected_cost=0.5), store.add))


async def test_usage_and_the_card_line(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock, guild_budget=1.0, bot_budget=4.0)
    await finished(store, 0.84)
    server, bot = await checker.usage(7)
    assert (server.scope, server.fraction) == ("server", pytest.approx(0.84))
    assert render.budget_note(server) == "This server has used 84% of today's $1.00 budget."
    assert render.budget_note(bot) == "The bot has used 21% of today's $4.00 budget."
    assert render.budget_note(BudgetUse("server", 0.8, 1.0)) == (
        "This server has used 80% of today's $1.00 budget."
    )


# -- no slipping past -------------------------------------------------------------------------


async def test_two_members_at_once_cannot_both_slip_past(store: JobStore, clock: Clock) -> None:
    checker = budgets(store, clock, guild_budget=1.0)

    async def slow_add(job: NewJob) -> Job:
        await asyncio.sleep(0.05)  # a check that doesn't hold the lock lets the other in here
        return await store.add(job)

    results = await asyncio.gather(
        checker.admit(new_job(user_id=1, expected_cost=0.6), slow_add),
        checker.admit(new_job(user_id=2, expected_cost=0.6), slow_add),
    )
    assert sorted(type(r).__name__ for r in results) == ["Job", "Refusal"]
    assert len(await store.by_status("queued")) == 1


async def test_the_scheduler_refuses_past_the_budget_without_a_prediction(
    tmp_path: Path,
) -> None:
    store = await JobStore.open(tmp_path / "sched.db")
    backend = MemoryBackend()
    backend.hold()
    scheduler = Scheduler(
        store,
        backend,
        RecordingEvents(),
        Limits(store, cooldown_seconds=0, daily_quota=0, max_queued_per_user=0),
        max_concurrent=2,
        cost_per_second=RATE,
        budgets=Budgets(store, cost_per_second=RATE, guild_budget=0.015),  # one 1 s track
    )
    await scheduler.start()
    try:
        results = await asyncio.gather(
            *(scheduler.submit(scheduler_job(user_id=n)) for n in (1, 2, 3))
        )
        jobs = [r for r in results if isinstance(r, Job)]
        assert len(jobs) == 1 and jobs[0].expected_cost == pytest.approx(RATE)
        assert all(r.reason == "budget" for r in results if isinstance(r, Refusal))
        await asyncio.sleep(0.1)
        assert len(backend.creates) <= 1
        assert len(await store.by_status("queued", "running")) == 1
    finally:
        backend.release()
        await scheduler.close()
        await store.close()
