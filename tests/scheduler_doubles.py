"""Small recording implementations of the scheduler's two protocols, for fast fault tests.

`MemoryBackend` is a `MusicBackend` whose predictions finish when a test says so (or at once)
and can be told to raise; `RecordingEvents` is a `JobEvents` that remembers every call and
delivers by returning a made-up message. Both implement the real protocols, so the scheduler
under test is the real one, with a real SQLite store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.jobs.limits import Limits
from bot.jobs.scheduler import Claim, Delivery, Scheduler
from bot.jobs.store import Job, JobStore, NewJob
from bot.music.backend import CreatedCallback, Progress, ProgressCallback, Track
from bot.music.errors import GenerationError
from bot.music.replicate import DATA_URI_LIMIT, data_uri
from bot.music.request import MusicRequest
from tests.harness import wait_for


def new_job(user_id: int = 1, prompt: str = "a loop", **request: object) -> NewJob:
    return NewJob(
        guild_id=7,
        channel_id=8,
        user_id=user_id,
        interaction_id=10_000 + user_id,
        application_id=9,
        token="aW50ZXJhY3Rpb246dGVzdA",
        token_expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_json=json.dumps({"prompt": prompt, "duration": 1, **request}),
    )


def track(prediction_id: str) -> Track:
    return Track(
        data=b"RIFF....WAVE",
        format="wav",
        prediction_id=prediction_id,
        model_version="stereo-large",
        seed=1,
        predict_time=1.0,
        elapsed=1.0,
        output_url=f"https://replicate.delivery/{prediction_id}/out.wav",
        url_expires_at=None,
    )


@dataclass(frozen=True)
class Upload:
    """One `upload_audio` call and the URI it returned."""

    data: bytes = field(repr=False)
    filename: str
    content_type: str
    uri: str


class MemoryBackend:
    """Predictions in memory. `hold()` makes them wait for `release()`; `raise_next` fails
    the next finish with the given exception. Uploads are recorded in `uploads`."""

    def __init__(self) -> None:
        self.creates: list[str] = []
        self.resumes: list[str] = []
        self.cancels: list[str] = []
        self.uploads: list[Upload] = []
        self.raise_next: deque[BaseException] = deque()
        self._gate = asyncio.Event()
        self._gate.set()
        self.waiting = 0

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def generate(
        self,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
        on_created: CreatedCallback | None = None,
    ) -> Track:
        prediction_id = f"p{len(self.creates) + 1}"
        self.creates.append(prediction_id)
        if on_created is not None:
            await on_created(prediction_id)
        return await self._finish(prediction_id, on_progress)

    async def resume(
        self,
        prediction_id: str,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Track:
        self.resumes.append(prediction_id)
        return await self._finish(prediction_id, on_progress)

    async def cancel(self, prediction_id: str) -> None:
        self.cancels.append(prediction_id)

    async def upload_audio(
        self, data: bytes, *, filename: str, content_type: str = "audio/wav"
    ) -> str:
        """A data URI under Replicate's limit, else a made-up file URL, as the real one does."""
        if len(data) < DATA_URI_LIMIT:
            uri = data_uri(data, content_type)
        else:
            uri = f"https://api.replicate.com/v1/files/memory{len(self.uploads) + 1}"
        self.uploads.append(Upload(data, filename, content_type, uri))
        return uri

    async def aclose(self) -> None:
        pass

    async def _finish(self, prediction_id: str, on_progress: ProgressCallback | None) -> Track:
        if on_progress is not None:
            await on_progress(Progress("processing", 0.1, 50.0, 0.1))
        self.waiting += 1
        try:
            await self._gate.wait()
        finally:
            self.waiting -= 1
        if self.raise_next:
            raise self.raise_next.popleft()
        return track(prediction_id)


@dataclass
class RecordingEvents:
    """Every event, in order. `finish_hook` runs inside on_finished, after the claim."""

    queued: list[tuple[int, int]] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    unclaimed: list[int] = field(default_factory=list)
    failed: list[tuple[int, GenerationError]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    finish_error: BaseException | None = None
    before_claim: asyncio.Event | None = None
    after_claim: asyncio.Event | None = None
    at_finish: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_queued(self, job: Job, position: int) -> None:
        self.queued.append((job.id, position))

    async def on_progress(self, job: Job, progress: Progress) -> None:
        self.progress.append(job.id)

    async def on_finished(
        self, job: Job, track: Track, *, resumed: bool, claim: Claim
    ) -> Delivery | None:
        self.at_finish.set()
        if self.finish_error is not None:
            raise self.finish_error
        if self.before_claim is not None:
            await self.before_claim.wait()
        if not await claim():
            self.unclaimed.append(job.id)
            return None
        if self.after_claim is not None:
            await self.after_claim.wait()
        self.delivered.append(job.id)
        return Delivery(message_id=100_000 + job.id, channel_id=job.channel_id)

    async def on_failed(self, job: Job, error: GenerationError) -> None:
        self.failed.append((job.id, error))

    async def on_cancelled(self, job: Job) -> None:
        self.cancelled.append(job.id)

    def on_ended(self, job_id: int) -> None:
        self.ended.append(job_id)


@dataclass
class Rig:
    store: JobStore
    backend: MemoryBackend
    events: RecordingEvents
    scheduler: Scheduler
    path: Path

    async def job(self, job_id: int) -> Job:
        job = await self.store.get(job_id)
        assert job is not None
        return job

    async def until(self, probe: Callable[[], object], timeout: float = 5.0) -> None:
        await wait_for(probe, timeout, interval=0.01)

    async def until_status(self, job_id: int, status: str, timeout: float = 5.0) -> Job:
        async def reached() -> Job | None:
            job = await self.job(job_id)
            return job if job.status == status else None

        result: Job = await wait_for(reached, timeout, interval=0.01)
        return result


def scheduler_for(
    store: JobStore,
    backend: MemoryBackend,
    events: RecordingEvents,
    *,
    max_concurrent: int = 2,
    max_crashes: int = 3,
    **options: Any,
) -> Scheduler:
    """`options`: the Scheduler's other keyword arguments (lease_seconds, on_poll_share...)."""
    limits = Limits(store, cooldown_seconds=0, daily_quota=0, max_queued_per_user=0)
    return Scheduler(
        store,
        backend,
        events,
        limits,
        max_concurrent=max_concurrent,
        cost_per_second=0.001,
        max_crashes=max_crashes,
        **options,
    )


@asynccontextmanager
async def rig(
    path: Path, *, max_concurrent: int = 2, max_crashes: int = 3, busy_timeout: float = 0.05
) -> AsyncIterator[Rig]:
    store = await JobStore.open(path, busy_timeout=busy_timeout)
    backend = MemoryBackend()
    events = RecordingEvents()
    scheduler = scheduler_for(
        store, backend, events, max_concurrent=max_concurrent, max_crashes=max_crashes
    )
    await scheduler.start()
    try:
        yield Rig(store, backend, events, scheduler, path)
    finally:
        backend.release()
        await scheduler.close()
        await store.close()


@asynccontextmanager
async def write_lock(path: Path) -> AsyncIterator[None]:
    """Hold the database's write lock from another connection, as a `sqlite3` shell can."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()
