"""Runs jobs: a fair line, a concurrency cap, resumption after restarts, cancellation.

Invariants:
- the prediction id is committed to the store before the first poll, so a crash resumes that
  prediction instead of paying for a new one;
- every job ends in exactly one terminal status (the store's guarded transitions) and the user
  sees exactly one outcome;
- shutdown leaves running jobs `running` in the store, to be resumed by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from bot.jobs.limits import Limits, Refusal
from bot.jobs.queue import FairQueue
from bot.jobs.store import Job, JobStore, NewJob
from bot.music.backend import MusicBackend, Progress, Track
from bot.music.errors import GenerationError, OutputError, TransientPredictionError
from bot.music.request import ABSOLUTE_MAX_DURATION, MusicRequest

log = logging.getLogger(__name__)

# Queue positions are pushed to placeholders only this far down the line; further back, the
# place first shown stands until the job comes within reach (saves a flood of edits).
POSITION_UPDATES_WITHIN = 20
# Position edits wait this long and go out together: a burst of commands gets all its
# "thinking…" acknowledgements first, and a moving line costs one pass, not one per change.
POSITION_UPDATE_DELAY = 0.2


@dataclass(frozen=True)
class Delivery:
    """Where a finished track was posted."""

    message_id: int
    channel_id: int


class DeliveryError(Exception):
    """The track was made but could not be posted anywhere."""


class JobEvents(Protocol):
    """How the scheduler tells the front end what happens; the front end knows the chat."""

    async def on_queued(self, job: Job, position: int) -> None: ...

    async def on_progress(self, job: Job, progress: Progress) -> None: ...

    async def on_finished(self, job: Job, track: Track, *, resumed: bool) -> Delivery:
        """Post the track (raise DeliveryError if impossible). With `resumed`, check first
        whether an earlier process already posted it."""
        ...

    async def on_failed(self, job: Job, error: GenerationError) -> None: ...

    async def on_cancelled(self, job: Job) -> None: ...


def load_request(job: Job) -> MusicRequest:
    """The job's request, as validated when it was accepted (later cap changes don't apply)."""
    return MusicRequest.model_validate_json(
        job.request_json, context={"max_duration": ABSOLUTE_MAX_DURATION}
    )


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        backend: MusicBackend,
        events: JobEvents,
        limits: Limits,
        *,
        max_concurrent: int,
        cost_per_second: float,
    ) -> None:
        self._store = store
        self._backend = backend
        self._events = events
        self._limits = limits
        self._max_concurrent = max_concurrent
        self._cost_per_second = cost_per_second
        self._queue = FairQueue()
        self._waiting: dict[int, Job] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._user_locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}  # lock, users of it
        self._position_update: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._shown_positions: dict[int, int] = {}
        self.peak_running = 0

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a previous process left: running jobs first, then the line in order."""
        for job in await self._store.by_status("running"):
            if job.prediction_id is None:
                await self._store.requeue(job.id)
            else:
                log.info("job %d: resuming prediction %s", job.id, job.prediction_id)
                self._launch(job, resumed=True)
        for job in await self._store.by_status("queued"):
            self._enqueue(job)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="jambot-dispatcher")
        self._wakeup.set()
        self._update_positions_soon()

    async def close(self) -> None:
        """Stop taking and starting work. Running jobs stay `running` in the store."""
        self._closing = True
        background = (self._dispatcher, self._position_update, *self._tasks)
        tasks = [t for t in (*background, *self._running.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the API the front end uses ---------------------------------------------------------

    async def submit(self, new_job: NewJob) -> Job | Refusal:
        """Check the user's limits and enqueue; the job's place in line is shown soon after
        (unless a free slot starts it right away, and progress shows instead)."""
        if self._closing:
            return Refusal("queue", None, "The bot is restarting; please try again in a minute.")
        async with self._user_lock(new_job.user_id):  # check-then-add, one at a time per user
            refusal = await self._limits.check(new_job.user_id)
            if refusal is not None:
                return refusal
            job = await self._store.add(new_job)
        self._enqueue(job)
        log.info("job %d: queued for user %d", job.id, job.user_id)
        self._wakeup.set()
        self._update_positions_soon()
        return job

    def position(self, job_id: int) -> int | None:
        return self._queue.positions().get(job_id)

    def waiting(self) -> list[Job]:
        """The line, in the order jobs will start."""
        return [self._waiting[job_id] for job_id in self._queue.order()]

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def cancel(self, job_id: int) -> Job | None:
        """Cancel a queued or running job. Returns the job as it was, or None if not active."""
        before = await self._store.cancel(job_id)
        if before is None:
            return None
        if self._queue.remove(job_id):
            self._waiting.pop(job_id, None)
            self._update_positions_soon()
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        elif before.prediction_id is not None:
            await self._backend.cancel(before.prediction_id)
        self._spawn(self._events.on_cancelled(before))
        return before

    # -- internals --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _user_lock(self, user_id: int) -> AsyncIterator[None]:
        """One lock per user with a submission in progress; forgotten when none is."""
        lock, holders = self._user_locks.setdefault(user_id, (asyncio.Lock(), [0]))
        holders[0] += 1
        try:
            async with lock:
                yield
        finally:
            holders[0] -= 1
            if holders[0] == 0:
                del self._user_locks[user_id]

    def _enqueue(self, job: Job) -> None:
        self._queue.push(job.user_id, job.id)
        self._waiting[job.id] = job

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            moved = False
            while len(self._running) < self._max_concurrent and len(self._queue):
                job_id = self._queue.pop()
                assert job_id is not None
                self._waiting.pop(job_id, None)
                self._shown_positions.pop(job_id, None)
                job = await self._store.start(job_id)
                if job is not None:
                    self._launch(job, resumed=False)
                moved = True
            if moved:
                self._update_positions_soon()

    def _update_positions_soon(self) -> None:
        if self._position_update is None and not self._closing:
            self._position_update = asyncio.create_task(self._update_positions())

    async def _update_positions(self) -> None:
        """Show each waiting job its place: first time always, then when it moves within reach."""
        await asyncio.sleep(POSITION_UPDATE_DELAY)
        self._position_update = None
        for job_id, position in self._queue.positions().items():
            shown = self._shown_positions.get(job_id)
            if shown == position or (shown is not None and position > POSITION_UPDATES_WITHIN):
                continue
            self._shown_positions[job_id] = position
            self._spawn(self._events.on_queued(self._waiting[job_id], position))

    def _launch(self, job: Job, *, resumed: bool) -> None:
        task = asyncio.create_task(self._run(job, resumed), name=f"jambot-job-{job.id}")
        self._running[job.id] = task
        self.peak_running = max(self.peak_running, len(self._running))
        task.add_done_callback(lambda _: self._finished(job.id))

    def _finished(self, job_id: int) -> None:
        self._running.pop(job_id, None)
        if not self._closing:
            self._wakeup.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a front-end notification in the background, keeping a reference to it."""
        task = asyncio.create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job, resumed: bool) -> None:
        prediction: list[str] = [job.prediction_id] if job.prediction_id else []
        try:
            track = await self._generate(job, prediction)
        except asyncio.CancelledError:
            if not self._closing and prediction:
                await asyncio.shield(self._backend.cancel(prediction[-1]))
            raise
        except GenerationError as exc:
            await self._fail(job, exc)
            return
        await self._deliver(job, track, resumed=resumed)

    async def _generate(self, job: Job, prediction: list[str]) -> Track:
        request = load_request(job)

        async def progress(event: Progress) -> None:
            # in the background: a slow chat edit must never delay polling or the download
            self._spawn(self._events.on_progress(job, event))

        if prediction:
            try:
                return await self._backend.resume(prediction[0], request, on_progress=progress)
            except TransientPredictionError as exc:
                # it died (out of memory, a lost worker): as a live job would, make it anew
                log.info("job %d: resumed prediction failed (%s); creating anew", job.id, exc)
                prediction.clear()

        async def created(prediction_id: str) -> None:
            prediction.append(prediction_id)
            if not await self._store.set_prediction(job.id, prediction_id):
                raise asyncio.CancelledError  # cancelled between create and commit

        return await self._backend.generate(request, on_progress=progress, on_created=created)

    async def _fail(self, job: Job, error: GenerationError) -> None:
        log.info("job %d: failed: %s", job.id, error.detail)
        if await self._store.fail(job.id, error=error.user_message, detail=error.detail):
            await _logged(self._events.on_failed(job, error))

    async def _deliver(self, job: Job, track: Track, *, resumed: bool) -> None:
        cost = (track.predict_time or 0.0) * self._cost_per_second
        await self._store.record_result(
            job.id, seed=track.seed, predict_time=track.predict_time, cost_estimate=cost
        )
        current = await self._store.get(job.id)
        if current is None or current.status != "running":
            return  # cancelled while downloading: the user already saw "cancelled"
        try:
            where = await self._events.on_finished(current, track, resumed=resumed)
        except DeliveryError as exc:
            log.warning("job %d: delivery failed: %s", job.id, exc)
            error = OutputError("The track was made, but Discord refused to post it.", str(exc))
            await self._fail(job, error)
            return
        await self._store.deliver(job.id, message_id=where.message_id, channel_id=where.channel_id)
        log.info(
            "job %d: delivered (seed %s, %.1fs on GPU, ~$%.4f)",
            job.id,
            track.seed,
            track.predict_time or 0.0,
            cost,
        )


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    """Await a front-end notification; its failure is logged, never fatal to the job."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("front-end notification failed")
