"""The scheduler's supervision, against a real SQLite store and small recording doubles.

Every fault here once left a job `running` forever or killed the dispatcher; now each job ends
in exactly one terminal status with one outcome for the user, and the line keeps moving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.jobs import scheduler as scheduler_module
from bot.jobs.failures import CrashLoopFailure, InternalFailure, StorageFailure
from bot.jobs.limits import Refusal
from bot.jobs.scheduler import CancelOutcome
from bot.jobs.store import Job, JobStore
from bot.music.errors import OutputError
from tests.conftest import fill_disk
from tests.harness import wait_for
from tests.scheduler_doubles import (
    MemoryBackend,
    RecordingEvents,
    new_job,
    rig,
    scheduler_for,
    write_lock,
)


async def _has_status(store: JobStore, job_id: int, status: str) -> bool:
    job = await store.get(job_id)
    return job is not None and job.status == status


async def submitted(result: Job | Refusal) -> Job:
    assert isinstance(result, Job), result
    return result


async def test_an_unexpected_exception_fails_the_job_with_a_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path / "jambot.db") as r:
        r.backend.raise_next.append(RuntimeError("a bug deep inside"))
        job = await submitted(await r.scheduler.submit(new_job()))
        ended = await r.until_status(job.id, "failed")
        await r.until(lambda: r.events.failed)
        [(failed_id, error)] = r.events.failed
        assert failed_id == job.id and isinstance(error, InternalFailure)
        assert ended.error == error.user_message and "logs" in error.user_message
        assert any(
            rec.exc_info and "a bug deep inside" in str(rec.exc_info[1]) for rec in caplog.records
        )
        # the line keeps moving
        again = await submitted(await r.scheduler.submit(new_job(user_id=2)))
        await r.until_status(again.id, "delivered")


async def test_unusable_audio_in_delivery_fails_the_job(tmp_path: Path) -> None:
    async with rig(tmp_path / "jambot.db") as r:
        r.events.finish_error = OutputError("Replicate returned a file that isn't audio.")
        job = await submitted(await r.scheduler.submit(new_job()))
        failed = await r.until_status(job.id, "failed")
        assert failed.error == "Replicate returned a file that isn't audio."
        assert failed.token == ""  # no token at rest once the job has ended


async def test_a_bug_in_delivery_fails_the_job(tmp_path: Path) -> None:
    async with rig(tmp_path / "jambot.db") as r:
        r.events.finish_error = KeyError("oops")
        job = await submitted(await r.scheduler.submit(new_job()))
        await r.until_status(job.id, "failed")
        assert isinstance(r.events.failed[0][1], InternalFailure)


async def test_a_locked_database_delays_jobs_but_loses_none(tmp_path: Path) -> None:
    path = tmp_path / "jambot.db"
    async with rig(path, max_concurrent=1) as r:
        r.backend.hold()
        first = await submitted(await r.scheduler.submit(new_job(user_id=1)))
        second = await submitted(await r.scheduler.submit(new_job(user_id=2)))
        await r.until(lambda: r.backend.waiting == 1)
        async with write_lock(path):  # an operator's sqlite3 shell in a write transaction
            r.backend.release()  # first finishes: record_result, deliver ... all locked
            await asyncio.sleep(0.6)
            assert not r.scheduler.health().ok
            assert "busy" in r.scheduler.health().reason
            assert (await r.job(first.id)).status == "running"
        await r.until_status(first.id, "delivered")
        await r.until_status(second.id, "delivered")  # the dispatcher survived
        assert r.scheduler.health().ok
        assert r.backend.creates == ["p1", "p2"]


async def test_a_prediction_that_cant_be_recorded_is_cancelled_not_orphaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create and the lock race: lock first, then let the create happen."""
    monkeypatch.setattr(scheduler_module, "RECORD_PREDICTION_WITHIN", 0.3)
    path = tmp_path / "jambot.db"
    store = await JobStore.open(path, busy_timeout=0.05)
    backend, events = MemoryBackend(), RecordingEvents()
    created = asyncio.Event()
    original = backend.generate

    async def generate_under_lock(*args: object, **kwargs: object) -> object:
        async with write_lock(path):
            created.set()
            task = asyncio.ensure_future(original(*args, **kwargs))  # type: ignore[arg-type]
            await asyncio.sleep(0.5)
        return await task

    backend.generate = generate_under_lock  # type: ignore[method-assign]
    scheduler = scheduler_for(store, backend, events)
    await scheduler.start()
    try:
        job = await submitted(await scheduler.submit(new_job()))
        await asyncio.wait_for(created.wait(), 5)
        await wait_for(lambda: _has_status(store, job.id, "failed"), 5)
        assert backend.cancels == ["p1"] and backend.creates == ["p1"]
        assert isinstance(events.failed[0][1], StorageFailure)
    finally:
        await scheduler.close()
        await store.close()

    # after a restart nothing is created again: the job ended
    async with rig(path) as again:
        await asyncio.sleep(0.2)
        assert again.backend.creates == [] and again.backend.resumes == []


async def test_a_job_that_keeps_crashing_the_process_is_failed_not_resumed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jambot.db"
    store = await JobStore.open(path)
    job = await store.add(new_job())
    await store.start(job.id)  # run 1 ... crash
    await store.set_prediction(job.id, "p-poison")
    await store.take_over("run-2", 30, expired_only=False)  # run 2 ... crash
    await store.take_over("run-3", 30, expired_only=False)  # run 3 ... crash
    await store.close()

    async with rig(path, max_crashes=3) as r:
        failed = await r.until_status(job.id, "failed")
        assert r.backend.resumes == [] and r.backend.cancels == ["p-poison"]
        [(_, error)] = r.events.failed
        assert isinstance(error, CrashLoopFailure) and "3 times" in failed.error  # type: ignore[operator]


async def test_a_clean_stop_does_not_count_as_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "jambot.db"
    async with rig(path) as r:
        r.backend.hold()
        job = await submitted(await r.scheduler.submit(new_job()))
        await r.until(lambda: r.backend.waiting == 1)
        assert (await r.job(job.id)).unfinished_runs == 1
    store = await JobStore.open(path)
    stopped = await store.get(job.id)
    await store.close()
    assert stopped is not None and (stopped.status, stopped.unfinished_runs) == ("running", 0)

    async with rig(path) as r:  # resumes: one unfinished run again, then delivered
        await r.until_status(job.id, "delivered")
        assert r.backend.resumes == ["p1"]


async def test_a_cancel_after_the_post_began_says_already_delivered(tmp_path: Path) -> None:
    async with rig(tmp_path / "jambot.db") as r:
        r.events.after_claim = asyncio.Event()  # the upload is under way
        job = await submitted(await r.scheduler.submit(new_job()))
        await r.until(lambda: r.events.at_finish.is_set())
        await asyncio.sleep(0.05)
        assert await r.scheduler.cancel(job.id) == CancelOutcome.DELIVERED
        r.events.after_claim.set()
        delivered = await r.until_status(job.id, "delivered")
        assert r.events.cancelled == [] and r.events.delivered == [job.id]
        assert delivered.token == ""
        assert await r.scheduler.cancel(job.id) == CancelOutcome.DELIVERED


async def test_a_cancel_before_the_post_posts_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path / "jambot.db") as r:
        r.events.before_claim = asyncio.Event()  # fitting the file, not yet posting
        job = await submitted(await r.scheduler.submit(new_job()))
        await r.until(lambda: r.events.at_finish.is_set())
        assert await r.scheduler.cancel(job.id) == CancelOutcome.CANCELLED
        await r.until_status(job.id, "cancelled")
        assert r.events.delivered == []
        assert await r.scheduler.cancel(job.id) == CancelOutcome.FINISHED


async def test_a_full_disk_refuses_new_jobs_while_running_ones_finish(tiny_disk: Path) -> None:
    async with rig(tiny_disk / "jambot.db", max_concurrent=1) as r:
        r.backend.hold()
        running = await submitted(await r.scheduler.submit(new_job(user_id=1)))
        await r.until(lambda: r.backend.waiting == 1)
        filler = fill_disk(tiny_disk)

        refused = await r.scheduler.submit(new_job(user_id=2))
        assert isinstance(refused, Refusal) and refused.reason == "storage"
        assert "storage is full" in refused.message
        assert not r.scheduler.health().ok and "full" in r.scheduler.health().reason

        r.backend.release()  # the running job finishes on the freed reserve
        await r.until_status(running.id, "delivered")
        refused_again = await r.scheduler.submit(new_job(user_id=3))
        assert isinstance(refused_again, Refusal)

        filler.unlink()  # the operator frees space
        accepted = await submitted(await r.scheduler.submit(new_job(user_id=4)))
        await r.until_status(accepted.id, "delivered")
        assert r.scheduler.health().ok


async def test_a_long_run_of_jobs_leaves_no_per_job_state(tmp_path: Path) -> None:
    async with rig(tmp_path / "jambot.db", max_concurrent=4) as r:
        r.backend.hold()
        jobs = [await submitted(await r.scheduler.submit(new_job(user_id=u))) for u in range(60)]
        await r.until(lambda: len(r.events.queued) >= 50)  # places shown to those waiting
        for job in jobs[-10:]:  # cancelled while waiting, after their place was shown
            assert await r.scheduler.cancel(job.id) == CancelOutcome.CANCELLED
        r.backend.release()
        for job in jobs[:50]:
            await r.until_status(job.id, "delivered")
        await r.until(lambda: r.scheduler.running_count == 0)
        await asyncio.sleep(0.3)  # let position updates and notifications settle
        footprint = r.scheduler.footprint()
        assert footprint == {key: 0 for key in footprint}, footprint
        assert sorted(r.events.ended) == [job.id for job in jobs[:50]]


async def test_a_failing_notification_is_logged_and_the_job_still_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with rig(tmp_path / "jambot.db") as r:

        async def broken(job: Job, progress: object) -> None:
            raise RuntimeError("chat edit failed")

        r.events.on_progress = broken  # type: ignore[method-assign, assignment]
        job = await submitted(await r.scheduler.submit(new_job()))
        await r.until_status(job.id, "delivered")
        assert "front-end notification failed" in caplog.text
