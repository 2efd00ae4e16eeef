"""Runs jobs: a fair line, a concurrency cap, resumption after restarts, cancellation.

Invariants:
- the prediction id is committed to the store before the first poll, so a crash resumes that
  prediction instead of paying for a new one; a prediction whose id can't be committed is
  cancelled at once, never left running unrecorded;
- every job ends in exactly one terminal status (the store's guarded transitions) and the user
  sees exactly one outcome, whatever is raised inside the job: an unexpected exception fails
  the job with a sentence and logs the traceback;
- the dispatcher can't die: store errors are retried with a bounded backoff, a bug is logged
  and dispatching goes on; a full disk refuses new jobs with a sentence and `health()` says so;
- a job that keeps taking the process down is failed instead of resumed again;
- shutdown leaves running jobs `running` in the store, to be resumed by the next start (or,
  on a shared store, by another process at once: their leases end with the shutdown).

The line lives in the store, not here, so that several processes sharing a PostgreSQL store
keep one promise between them: a process claims the next job of the fair line only while
fewer than `max_concurrent` run in all processes together (`JobStore.claim_next`), holds a
lease on each job it runs and renews it every third of `lease_seconds`; a job whose lease
expires (its process died) is taken over by another process and resumes its prediction. A
process wakes to claim when the store says jobs changed (PostgreSQL's NOTIFY), and at the
heartbeat as a safety net, never in a tight loop. One SQLite process is the same code with
one member.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bot.jobs.budget import Budgets
from bot.jobs.failures import CrashLoopFailure, InternalFailure, StorageFailure
from bot.jobs.guild_settings import Rules
from bot.jobs.limits import Limits, Refusal
from bot.jobs.store import Job, JobStore, NewJob, StoreError, Waiting
from bot.music.backend import MusicBackend, Progress, Track
from bot.music.errors import GenerationError, OutputError, TransientPredictionError
from bot.music.request import MusicRequest
from bot.ops.metrics import NO_METRICS, JobMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# Queue positions are pushed to placeholders only this far down the line; further back, the
# place first shown stands until the job comes within reach (saves a flood of edits).
POSITION_UPDATES_WITHIN = 20
# Position edits wait this long and go out together: a burst of commands gets all its
# "thinking…" acknowledgements first, and a moving line costs one pass, not one per change.
POSITION_UPDATE_DELAY = 0.2
# Store retries: the first wait, and the longest (the backoff doubles up to it).
STORE_RETRY_FIRST = 0.05
STORE_RETRY_MAX = 5.0
# How long a created prediction may wait for its id to be committed before it is cancelled.
RECORD_PREDICTION_WITHIN = 20.0
# How long start-up waits for a busy store before giving up (the process then exits).
STARTUP_STORE_WITHIN = 60.0
DEFAULT_MAX_CRASHES = 3
DEFAULT_LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class Delivery:
    """Where a finished track was posted."""

    message_id: int
    channel_id: int


class DeliveryError(Exception):
    """The track was made but could not be posted anywhere."""


Claim = Callable[[], Awaitable[bool]]


class JobEvents(Protocol):
    """How the scheduler tells the front end what happens; the front end knows the chat."""

    async def on_queued(self, job: Job, position: int) -> None: ...

    async def on_progress(self, job: Job, progress: Progress) -> None: ...

    async def on_finished(
        self, job: Job, track: Track, *, resumed: bool, claim: Claim
    ) -> Delivery | None:
        """Post the track. Await `claim()` right before posting: False means the job was
        cancelled meanwhile, so post nothing and return None. Raise DeliveryError if the
        track can't be posted, or a GenerationError if the audio is unusable. With
        `resumed`, check first whether an earlier process already posted it."""
        ...

    async def on_failed(self, job: Job, error: GenerationError) -> None: ...

    async def on_cancelled(self, job: Job) -> None: ...

    def on_ended(self, job_id: int) -> None:
        """The job will produce no more events: drop whatever is kept for it."""
        ...


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"
    DELIVERED = "delivered"  # the track is posted or being posted
    FINISHED = "finished"  # failed, cancelled, or no such job
    UNAVAILABLE = "unavailable"  # the store couldn't be reached


@dataclass(frozen=True)
class Health:
    """Whether the scheduler can take and finish work, with a short reason when not."""

    ok: bool
    reason: str = "ok"


class _JobCancelled(Exception):
    """The job was cancelled between its prediction's create and the commit of its id."""


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
        max_crashes: int = DEFAULT_MAX_CRASHES,
        budgets: Budgets | None = None,
        metrics: JobMetrics = NO_METRICS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        starts_per_minute: int | None = None,
        on_poll_share: Callable[[float], None] | None = None,
    ) -> None:
        """`budgets` prices each job and holds it to the daily budgets (default: no caps).

        `max_concurrent` counts the jobs running in every process sharing the store;
        `starts_per_minute` (None: no limit) bounds the jobs started, and so the predictions
        created, in any minute by all of them; `on_poll_share` hears, at each heartbeat, this
        process's share of the jobs running in all (its share of the account's polls).
        """
        self._store = store
        self._backend = backend
        self._events = events
        self._limits = limits
        self._max_concurrent = max_concurrent
        self._cost_per_second = cost_per_second
        self._max_crashes = max_crashes
        self._budgets = budgets or Budgets(store, cost_per_second=cost_per_second)
        self._metrics = metrics
        self._lease_seconds = lease_seconds
        self._starts_per_minute = starts_per_minute
        self._on_poll_share = on_poll_share
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._accepted: dict[int, Job] = {}  # queued jobs this process shows the place of
        self._line: list[Waiting] = []  # the whole line, as last read from the store
        self._running: dict[int, asyncio.Task[None]] = {}
        self._launched_at: dict[int, float] = {}
        self._lost: set[int] = set()  # jobs whose lease another process holds now
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._user_locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}  # lock, users of it
        self._position_update: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._shown_positions: dict[int, int] = {}
        self._store_trouble: StoreError | None = None
        self.peak_running = 0

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume what a stopped process left running, then serve the line.

        On a store of its own (SQLite) every running job was left by an earlier process of
        this one; on a shared one, only jobs whose lease expired are taken over now (the rest
        belong to live processes, or will expire and be taken over at a heartbeat).
        """
        shared = self._store.shared
        taken = await self._persist(
            "take over running jobs",
            lambda: self._store.take_over(self.owner, self._lease_seconds, expired_only=shared),
            STARTUP_STORE_WITHIN,
        )
        for job in taken:
            await self._resume(job)
        if not shared:  # the line's places were shown by the earlier process: go on showing
            queued = await self._persist(
                "list queued jobs", lambda: self._store.by_status("queued"), STARTUP_STORE_WITHIN
            )
            self._accepted.update((job.id, job) for job in queued)
        self._store.database.add_listener(self._store_changed)
        await self._store.database.start_listening()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="jambot-dispatcher")
        self._heartbeat = asyncio.create_task(self._beat(), name="jambot-heartbeat")
        self._wakeup.set()
        self._update_positions_soon()

    async def close(self) -> None:
        """Stop taking and starting work. Running jobs stay `running` in the store."""
        self._closing = True
        interrupted = [job_id for job_id in self._running if job_id not in self._lost]
        background = (self._dispatcher, self._heartbeat, self._position_update, *self._tasks)
        tasks = [t for t in (*background, *self._running.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:  # these runs end cleanly: they don't count as crashes
            async with asyncio.timeout(2.0):
                await self._store.release_runs(interrupted, owner=self.owner)
        except (StoreError, TimeoutError) as exc:
            log.warning("could not record a clean stop of jobs %s: %s", interrupted, exc)

    # -- the API the front end uses ---------------------------------------------------------

    async def submit(self, new_job: NewJob, rules: Rules | None = None) -> Job | Refusal:
        """Check the user's limits and the daily budgets, and enqueue; the job's place in line
        is shown soon after (unless a free slot starts it right away, and progress shows
        instead). `rules` are the server's (None: the bot's defaults)."""
        if self._closing:
            return Refusal("queue", None, "The bot is restarting; please try again in a minute.")
        budget = rules.daily_budget_usd if rules is not None else None
        locks = self._budgets.locks(new_job.guild_id, budget)
        try:
            # check-then-add, one at a time per user: in this process, then in all of them
            async with (
                self._user_lock(new_job.user_id),
                self._store.admission(new_job.user_id, *locks),
            ):
                refusal = await self._duplicate(new_job) or await self._limits.check(
                    new_job.user_id, rules
                )
                if refusal is not None:
                    return refusal
                priced = await self._budgets.price(new_job)
                admitted = await self._budgets.admit(priced, self._store.add, guild_budget=budget)
                if isinstance(admitted, Refusal):
                    return admitted
                job = admitted
        except StoreError as exc:
            self._note_store_trouble(exc)
            log.error("refused a job: the store failed (%s)", exc.detail)
            return _storage_refusal(exc)
        self._note_store_ok()
        self._accepted[job.id] = job
        self._line.append(Waiting(job.id, job.user_id))  # until the line is read again
        log.info("job %d: queued for user %d", job.id, job.user_id)
        self._wakeup.set()
        self._update_positions_soon()
        return job

    async def _duplicate(self, new_job: NewJob) -> Refusal | None:
        """A second click of one button while the first one's job is still on its way."""
        parent = new_job.parent_job_id
        if parent is None:
            return None
        if not await self._store.has_active_follow_up(new_job.user_id, parent, new_job.action):
            return None
        return Refusal("duplicate", None, "That track is already on its way: one click is enough.")

    def position(self, job_id: int) -> int | None:
        """The job's place in line, as last read from the store (None: not waiting)."""
        for place, job in enumerate(self._line, start=1):
            if job.id == job_id:
                return place
        return None

    def waiting(self) -> list[Waiting]:
        """The line, in the order jobs will start, as last read from the store."""
        return list(self._line)

    async def line(self) -> list[Waiting]:
        """The line as it is now, in all processes together."""
        self._line = await self._store.line()
        return list(self._line)

    @property
    def running_count(self) -> int:
        """Jobs this process is generating or delivering."""
        return len(self._running)

    def health(self) -> Health:
        """Not ok while the store fails (busy, full or broken); ok again once it answers."""
        if self._store.full:
            return Health(False, "job store full: new jobs are refused until disk space is freed")
        trouble = self._store_trouble
        if trouble is None:
            return Health(True)
        return Health(False, f"job store {trouble.kind}: {trouble.detail}")

    def footprint(self) -> dict[str, int]:
        """Entries kept per job or user: all bounded by the jobs and users active now."""
        return {
            "waiting": len(self._accepted),
            "line": len(self._line),
            "running": len(self._running),
            "launched_at": len(self._launched_at),
            "lost": len(self._lost),
            "shown_positions": len(self._shown_positions),
            "user_locks": len(self._user_locks),
            "background_tasks": len(self._tasks),
        }

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel a queued or running job, unless its track is already on its way."""
        try:
            before = await self._persist("cancel job", lambda: self._store.cancel(job_id), 5.0)
            if before is None:
                return await self._why_not_cancelled(job_id)
        except StoreError:
            return CancelOutcome.UNAVAILABLE
        if self._accepted.pop(job_id, None) is not None or before.status == "queued":
            self._shown_positions.pop(job_id, None)
            self._line = [job for job in self._line if job.id != job_id]
            self._update_positions_soon()
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        elif before.prediction_id is not None:
            await self._backend.cancel(before.prediction_id)
        log.info("job %d: cancelled", job_id)
        self._metrics.job_ended("cancelled")
        self._spawn(self._events.on_cancelled(before))
        return CancelOutcome.CANCELLED

    # -- internals --------------------------------------------------------------------------

    async def _why_not_cancelled(self, job_id: int) -> CancelOutcome:
        job = await self._store.get(job_id)
        if job is not None and (job.status == "delivered" or job.delivering_at is not None):
            return CancelOutcome.DELIVERED
        return CancelOutcome.FINISHED

    async def _resume(self, job: Job) -> None:
        """A job another process left running, now leased to this one (the takeover counted
        this run): resume it, or give it up as a crash loop."""
        crashes = job.unfinished_runs - 1  # the runs before this one that never finished
        if crashes >= self._max_crashes:
            log.error("job %d: took the process down %d times; failing it", job.id, crashes)
            if job.prediction_id is not None:
                await self._backend.cancel(job.prediction_id)
            await self._fail(job, CrashLoopFailure(crashes))
            return
        if job.prediction_id is None:  # it crashed before its prediction was made
            if await self._persist("requeue job", lambda: self._store.requeue(job.id)):
                log.info("job %d: queued again (it stopped before its prediction was made)", job.id)
            return
        log.info("job %d: resuming prediction %s", job.id, job.prediction_id)
        self._launch(job, resumed=True)

    async def _persist(
        self, what: str, operation: Callable[[], Awaitable[T]], within: float | None = None
    ) -> T:
        """Run a store operation, retrying store failures with a bounded backoff.

        Without `within`, retries until the store answers (a job's outcome must not be
        lost); with it, re-raises the StoreError once that many seconds would be exceeded.
        """
        loop = asyncio.get_running_loop()
        give_up_at = None if within is None else loop.time() + within
        delay = STORE_RETRY_FIRST
        while True:
            try:
                result = await operation()
            except StoreError as exc:
                self._note_store_trouble(exc)
                if give_up_at is not None and loop.time() + delay > give_up_at:
                    raise
                log.warning("store: %s failed (%s); retrying in %.2fs", what, exc.detail, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
                continue
            self._note_store_ok()
            return result

    def _note_store_trouble(self, exc: StoreError) -> None:
        if self._store_trouble is None or self._store_trouble.kind != exc.kind:
            log.error("job store unhealthy (%s): %s", exc.kind, exc.detail)
        self._store_trouble = exc

    def _note_store_ok(self) -> None:
        if self._store_trouble is not None:
            log.warning("job store healthy again")
            self._store_trouble = None

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

    def _store_changed(self) -> None:
        """A job was added, ended or released somewhere: maybe a job can start here now."""
        self._wakeup.set()
        self._update_positions_soon()

    async def _dispatch(self) -> None:
        """Start waiting jobs whenever a slot may have freed. Nothing raised here stops it."""
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._start_waiting_jobs()
            except Exception:
                log.exception("dispatcher: unexpected failure; dispatching goes on")
                await asyncio.sleep(1.0)
                self._wakeup.set()

    async def _start_waiting_jobs(self) -> None:
        # a process that stopped cleanly ended its leases and said so: resume its jobs now
        await self._persist("take over jobs", self._take_over_expired)
        moved = False
        while not self._closing:
            job = await self._persist("start job", self._claim)
            if job is None:
                break
            self._accepted.pop(job.id, None)
            self._shown_positions.pop(job.id, None)
            self._line = [waiting for waiting in self._line if waiting.id != job.id]
            log.info("job %d: started (attempt %d)", job.id, job.attempts)
            self._launch(job, resumed=False)
            moved = True
        if moved:
            self._update_positions_soon()

    async def _claim(self) -> Job | None:
        return await self._store.claim_next(
            self.owner,
            cap=self._max_concurrent,
            lease_seconds=self._lease_seconds,
            starts_per_minute=self._starts_per_minute,
        )

    async def _beat(self) -> None:
        """Every third of a lease: renew this process's leases, notice the jobs it lost, take
        over the jobs of processes that stopped renewing theirs, share out the polls, and
        look at the line (in case a notification was missed). Nothing raised here stops it."""
        interval = self._lease_seconds / 3
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._renew()
                await self._take_over_expired()
                await self._share_polls()
                self._note_store_ok()
            except StoreError as exc:
                self._note_store_trouble(exc)
                log.warning("heartbeat: the store failed (%s)", exc.detail)
            except Exception:
                log.exception("heartbeat: unexpected failure; it goes on")
            self._wakeup.set()

    async def _share_polls(self) -> None:
        """Tell the backend its share of the account's polls: the share of the jobs running
        in all processes that run here (at least one job's worth, so a job claimed next
        doesn't start at zero). Looked at after every change of the line (in any process: a
        claim, an end, a release) and at each heartbeat."""
        if self._on_poll_share is None:
            return
        total = await self._store.running_count()
        share = max(len(self._running), 1) / max(total, len(self._running), 1)
        self._on_poll_share(min(1.0, share))

    async def _take_over_expired(self) -> None:
        """Resume here the running jobs of processes that stopped renewing their leases (or
        ended them at a clean stop). A read first: most looks find none."""
        if not self._store.shared or not await self._store.has_expired_leases():
            return
        for job in await self._store.take_over(self.owner, self._lease_seconds):
            log.warning("job %d: taken over from a process that stopped", job.id)
            await self._resume(job)

    async def _renew(self) -> None:
        """Renew the leases. A job launched before the renewal whose lease another process
        holds now was taken over (this one stalled past its lease): stop working on it here,
        leaving its prediction alone. (One that ended meanwhile, here or by a cancel in
        another process, ends its own way: its poll sees the cancel.)"""
        asked_at = asyncio.get_running_loop().time()
        held = await self._store.renew_leases(self.owner, self._lease_seconds)
        for job_id, task in list(self._running.items()):
            if job_id in held or self._launched_at.get(job_id, asked_at) >= asked_at:
                continue
            if task.done() or job_id in self._lost:
                continue
            job = await self._store.get(job_id)
            if job is not None and job.status == "running" and job.lease_owner != self.owner:
                log.warning("job %d: taken over by another process; leaving it to it", job_id)
                self._lost.add(job_id)
                task.cancel()

    def _update_positions_soon(self) -> None:
        if self._position_update is None and not self._closing:
            self._position_update = asyncio.create_task(self._update_positions())

    async def _update_positions(self) -> None:
        """Show each waiting job accepted here its place: first time always, then when it
        moves within reach. The line is read from the store (it spans every process)."""
        await asyncio.sleep(POSITION_UPDATE_DELAY)
        self._position_update = None
        known = set(self._accepted)  # a job accepted while the line is read isn't in it yet
        try:
            line = await self.line()
            await self._share_polls()
        except StoreError as exc:
            log.warning("could not read the line to show places in it (%s)", exc.detail)
            return
        positions = {job.id: place for place, job in enumerate(line, start=1)}
        for job_id in [j for j in known if j not in positions]:
            self._accepted.pop(job_id, None)  # it left the line (started, cancelled)
        for job_id in [j for j in self._shown_positions if j not in positions]:
            del self._shown_positions[job_id]
        for job_id, job in self._accepted.items():
            position = positions.get(job_id)
            if position is None:
                continue  # accepted during the read: the next pass shows it
            shown = self._shown_positions.get(job_id)
            if shown == position or (shown is not None and position > POSITION_UPDATES_WITHIN):
                continue
            self._shown_positions[job_id] = position
            self._spawn(self._events.on_queued(job, position))

    def _launch(self, job: Job, *, resumed: bool) -> None:
        task = asyncio.create_task(self._run(job, resumed), name=f"jambot-job-{job.id}")
        self._running[job.id] = task
        self._launched_at[job.id] = asyncio.get_running_loop().time()
        self.peak_running = max(self.peak_running, len(self._running))
        task.add_done_callback(lambda _: self._finished(job.id))

    def _finished(self, job_id: int) -> None:
        self._running.pop(job_id, None)
        self._launched_at.pop(job_id, None)
        self._lost.discard(job_id)
        if not self._closing:
            self._events.on_ended(job_id)
            self._wakeup.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a front-end notification in the background, keeping a reference to it."""
        task = asyncio.create_task(_logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job, resumed: bool) -> None:
        """One job, supervised: whatever is raised, it ends in one terminal status."""
        prediction: list[str] = [job.prediction_id] if job.prediction_id else []
        try:
            track = await self._generate(job, prediction)
            await self._deliver(job, track, resumed=resumed)
        except asyncio.CancelledError:
            if job.id in self._lost:  # another process has it now: its prediction goes on
                raise
            if not self._closing and prediction:  # the user cancelled: stop paying
                await asyncio.shield(self._backend.cancel(prediction[-1]))
            raise
        except _JobCancelled:
            await self._backend.cancel(prediction[-1])
        except GenerationError as exc:
            await self._fail(job, exc)
        except StoreError as exc:
            await self._fail(job, StorageFailure(detail=exc.detail))
        except Exception as exc:
            log.exception("job %d: unexpected failure", job.id)
            await self._fail(job, InternalFailure(detail=f"{type(exc).__name__}: {exc}"))

    async def _generate(self, job: Job, prediction: list[str]) -> Track:
        request = MusicRequest.from_stored(job.request_json)

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
            await self._record_prediction(job, prediction_id)

        return await self._backend.generate(request, on_progress=progress, on_created=created)

    async def _record_prediction(self, job: Job, prediction_id: str) -> None:
        """Commit the prediction id before the first poll; if that's impossible, cancel it."""
        try:
            recorded = await self._persist(
                "record prediction",
                lambda: self._store.set_prediction(job.id, prediction_id, owner=self.owner),
                RECORD_PREDICTION_WITHIN,
            )
        except StoreError:
            log.error("job %d: prediction %s not recorded; cancelling it", job.id, prediction_id)
            await self._backend.cancel(prediction_id)
            raise
        if not recorded:
            log.info("job %d: cancelled before prediction %s was recorded", job.id, prediction_id)
            raise _JobCancelled
        log.info("job %d: prediction %s", job.id, prediction_id)

    async def _fail(self, job: Job, error: GenerationError) -> None:
        changed = await self._persist(
            "record failure",
            lambda: self._store.fail(job.id, error=error.user_message, detail=error.detail),
        )
        if not changed:
            log.debug("job %d: had already ended; failure not recorded: %s", job.id, error.detail)
            return
        log.info("job %d: failed: %s", job.id, error.detail)
        self._metrics.job_ended("failed")
        await _logged(self._events.on_failed(job, error))

    async def _deliver(self, job: Job, track: Track, *, resumed: bool) -> None:
        in_hand = asyncio.get_running_loop().time()
        # without a reported GPU time, the estimate made at submit is the best figure there is
        if track.predict_time is not None:
            cost: float | None = track.predict_time * self._cost_per_second
        else:
            cost = job.expected_cost
        await self._persist(
            "record result",
            lambda: self._store.record_result(
                job.id, seed=track.seed, predict_time=track.predict_time, cost_estimate=cost
            ),
        )
        current = await self._persist("read job", lambda: self._store.get(job.id))
        if current is None or current.status != "running":
            return  # cancelled while downloading: the user already saw "cancelled"

        async def claim() -> bool:
            return await self._persist(
                "record delivery intent",
                lambda: self._store.mark_delivering(job.id, owner=self.owner),
            )

        try:
            where = await self._events.on_finished(current, track, resumed=resumed, claim=claim)
        except DeliveryError as exc:
            log.warning("job %d: delivery failed: %s", job.id, exc)
            error = OutputError("The track was made, but Discord refused to post it.", str(exc))
            await self._fail(job, error)
            return
        if where is None:
            return  # cancelled before the post: nothing was posted
        self._metrics.delivered(asyncio.get_running_loop().time() - in_hand)
        delivered = await self._persist(
            "record delivery",
            lambda: self._store.deliver(
                job.id, message_id=where.message_id, channel_id=where.channel_id
            ),
        )
        if delivered:
            self._metrics.job_ended("delivered")
        log.info(
            "job %d: delivered (seed %s, %.1fs on GPU, ~$%.4f)",
            job.id,
            track.seed,
            track.predict_time or 0.0,
            cost or 0.0,
        )


def _storage_refusal(exc: StoreError) -> Refusal:
    if exc.kind == "full":
        text = (
            "The bot can't take new tracks right now: its storage is full. The owner has been "
            "told; tracks already in progress will still arrive."
        )
    else:
        text = "The bot's database is busy right now; please try again in a minute."
    return Refusal("storage", None, text)


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    """Await a front-end notification; its failure is logged, never fatal to the job."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("front-end notification failed")
