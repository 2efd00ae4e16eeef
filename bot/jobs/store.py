"""Durable job records: every accepted /music command, from ``queued`` to one terminal status.

The store runs on either engine of ``bot.jobs.database``: one SQLite file (the default: one
process, nothing to run beside it) or one PostgreSQL database shared by several bot processes.
Its SQL is the same for both (``?`` placeholders, standard types); what differs (locks,
notifications, the driver's errors) lives in the engines.

Guarantees:

* Every change is committed before the method returns, so a process that restarts right after
  (for example after ``set_prediction``) finds it. A committed prediction id must survive a
  crash, or the prediction could be paid for twice.
* Every status change is one transaction around a guarded ``UPDATE ... WHERE status IN (...)``,
  so a job reaches exactly one terminal status even when the delivery, a failure and a user's
  cancel race each other, in this process or in another one. The method returns whether its
  transition happened.
* The line is in the database, not in a process: :meth:`JobStore.claim_next` starts the next
  job in the fair order (round-robin across users, in all processes together) only while fewer
  than the cap are running in all processes together, one decision at a time (the
  ``dispatch`` lock), and leases the job to the process that claimed it.
* A running job is leased: its owner renews the lease while it lives
  (:meth:`JobStore.renew_leases`); once the lease has expired, another process takes the job
  over (:meth:`JobStore.take_over`) and resumes its prediction. A process that lost a job's
  lease can no longer record a prediction for it or deliver it.
* Timestamps are stored as fixed-width ISO-8601 UTC text (see ``bot.clock``): readable in
  either shell and ordered as plain strings. In Python every datetime is timezone-aware UTC.
* A job's life is logged once, at INFO, by the scheduler that drives it; the transitions
  here are logged at DEBUG only, so each event is one line in an ordinary log.
* The interaction token is never logged and never shown in ``repr``. A job's token is erased
  when the job ends.
* The engines' failures reach callers as ``StoreError``s that say what kind they are (busy,
  unreachable, full, broken). Callers never catch a driver's exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, get_args

from bot.clock import format_timestamp, parse_timestamp, utc_now
from bot.jobs.database import Database, Row
from bot.jobs.guild_settings import GuildSettings
from bot.jobs.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteDatabase
from bot.jobs.store_errors import (
    DatabaseInUseError,
    StoreBusyError,
    StoreError,
    StoreFullError,
    StoreUnreachableError,
)

__all__ = [
    "ACTIVE",
    "STATUSES",
    "TERMINAL",
    "Activity",
    "DatabaseInUseError",
    "Job",
    "JobNotFound",
    "JobStatus",
    "JobStore",
    "NewJob",
    "StoreBusyError",
    "StoreError",
    "StoreFullError",
    "StoreUnreachableError",
    "Waiting",
]

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "delivered", "failed", "cancelled"]
STATUSES: frozenset[JobStatus] = frozenset(get_args(JobStatus))
ACTIVE: frozenset[JobStatus] = frozenset({"queued", "running"})
TERMINAL: frozenset[JobStatus] = frozenset({"delivered", "failed", "cancelled"})

# The fair order of the line: each user's waiting jobs numbered 1, 2, ... (their round); in
# each round, users by their last turn (never served first), then by their first waiting job.
_LINE_SQL = (
    "WITH waiting AS (SELECT id, user_id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id)"
    " AS round FROM jobs WHERE status = 'queued'),"
    " heads AS (SELECT user_id, MIN(id) AS first_id FROM waiting GROUP BY user_id),"
    " turns AS (SELECT heads.user_id, heads.first_id, COALESCE((SELECT MAX(turn) FROM jobs"
    " AS served WHERE served.user_id = heads.user_id), 0) AS last_turn FROM heads)"
    " SELECT waiting.id FROM waiting JOIN turns ON turns.user_id = waiting.user_id"
    " ORDER BY waiting.round, turns.last_turn, turns.first_id"
)


class Waiting(NamedTuple):
    """A job in line: its id and its user's."""

    id: int
    user_id: int


@dataclass(frozen=True)
class Activity:
    """What happened in a server over some time: tracks, failures, dollars."""

    tracks: int
    failures: int
    spend: float


class JobNotFound(LookupError):
    """No job has the given id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


@dataclass(frozen=True)
class Job:
    """One job as stored. ``token`` is left out of ``repr`` so it never reaches a log."""

    id: int
    created_at: datetime
    updated_at: datetime
    guild_id: int | None
    channel_id: int
    user_id: int
    interaction_id: int
    application_id: int
    token: str = field(repr=False)
    token_expires_at: datetime
    message_id: int | None
    request_json: str
    status: JobStatus
    prediction_id: str | None
    attempts: int
    seed: int | None
    started_at: datetime | None
    finished_at: datetime | None
    predict_time: float | None
    cost_estimate: float | None
    error: str | None
    error_detail: str | None
    delivered_message_id: int | None
    delivered_channel_id: int | None
    delivered_at: datetime | None
    unfinished_runs: int = 0
    delivering_at: datetime | None = None
    action: str = "music"
    parent_job_id: int | None = None
    extend_json: str | None = None
    expected_cost: float | None = None
    model_version: str | None = None
    duration_seconds: float | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    turn: int | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the job is delivered, failed or cancelled (it will never change again)."""
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Row) -> Job:
        """Build a Job from a ``SELECT * FROM jobs`` row."""
        status = row["status"]
        if status not in STATUSES:
            raise ValueError(f"job {row['id']} has an unknown status {status!r}")
        values: dict[str, Any] = {f.name: row[f.name] for f in fields(cls)}
        for name in _TIMES:
            values[name] = parse_timestamp(values[name])
        for name in _OPTIONAL_TIMES:
            values[name] = _optional_time(values[name])
        return cls(**values)


# Job fields stored as timestamp text: always set, and maybe unset.
_TIMES = ("created_at", "updated_at", "token_expires_at")
_OPTIONAL_TIMES = (
    "started_at",
    "finished_at",
    "delivered_at",
    "delivering_at",
    "lease_expires_at",
)


@dataclass(frozen=True)
class NewJob:
    """What the command handler knows when it accepts a /music command.

    ``request_json`` is the validated request serialized as JSON; the store keeps it as opaque
    text. ``guild_id`` is None for a command sent in a DM. ``expected_cost`` (dollars),
    ``model_version`` and ``duration_seconds`` are filled in by the scheduler when it prices
    the job: the daily budgets count a job with its expected cost until its real one is known.
    """

    guild_id: int | None
    channel_id: int
    user_id: int
    interaction_id: int
    application_id: int
    token: str = field(repr=False)
    token_expires_at: datetime
    request_json: str
    message_id: int | None = None
    action: str = "music"
    parent_job_id: int | None = None
    extend_json: str | None = None
    expected_cost: float | None = None
    model_version: str | None = None
    duration_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.token_expires_at.tzinfo is None or self.token_expires_at.utcoffset() is None:
            raise ValueError("token_expires_at must be timezone-aware")


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else parse_timestamp(text)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


_ACTIVE_SQL = "('queued', 'running')"


class JobStore:
    """Async access to the jobs. Build one with ``await JobStore.open(path_or_url)``."""

    def __init__(self, db: Database, *, now: Callable[[], datetime] = utc_now) -> None:
        """Wrap an open, migrated database; use :meth:`open` instead."""
        self._db = db
        self._now = now

    @classmethod
    async def open(
        cls,
        target: str | Path,
        *,
        now: Callable[[], datetime] = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        exclusive: bool = False,
        pool_size: int | None = None,
    ) -> JobStore:
        """Open and migrate the database at `target`: a SQLite file (a path, or
        ``sqlite:///path``; created with its folder if needed) or a ``postgresql://`` URL.

        `now` is the clock used for every timestamp; tests inject a fixed one. With
        `exclusive` (SQLite only), raise DatabaseInUseError if another process holds the file
        that way. Other failures to open or migrate raise StoreError.
        """
        text = str(target)
        if text.startswith(("postgresql://", "postgres://")):
            from bot.jobs.postgres import POOL_SIZE, PostgresDatabase

            db: Database = await PostgresDatabase.open(
                text, now=now, pool_size=pool_size or POOL_SIZE
            )
        else:
            path = text.removeprefix("sqlite:///") if isinstance(target, str) else target
            db = await SqliteDatabase.open(
                path, now=now, busy_timeout=busy_timeout, exclusive=exclusive
            )
        return cls(db, now=now)

    async def close(self) -> None:
        """Close the database (and release the process lock). Safe to call twice."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def database(self) -> Database:
        """The engine under the store (for health checks and notifications)."""
        return self._db

    @property
    def shared(self) -> bool:
        """Whether other processes may run jobs from this store at the same time."""
        return self._db.shared

    @property
    def full(self) -> bool:
        """Whether the disk filled up and new jobs are refused until space is freed."""
        return self._db.full

    def admission(self, user_id: int, *locks: str) -> AbstractAsyncContextManager[None]:
        """Hold the user's lock (and `locks`, such as the budgets') in every process while the
        calling task checks the user's limits and adds the job: two commands of one user, in
        two processes, can't both slip past a limit. The task's reads and writes in between
        go through the lock's connection and commit together."""
        return self._db.session(f"user:{user_id}", *locks)

    # -- creating and reading -------------------------------------------------------------

    async def add(self, job: NewJob) -> Job:
        """Store a new job with status ``queued`` and return it as stored.

        Raises StoreFullError while the disk is full.
        """
        await self._db.check_room()
        now = self._timestamp()
        async with self._db.write(notify=True) as tx:
            rows = await tx.fetch(
                "INSERT INTO jobs (created_at, updated_at, guild_id, channel_id, user_id,"
                " interaction_id, application_id, token, token_expires_at, message_id,"
                " request_json, status, attempts, action, parent_job_id, extend_json,"
                " expected_cost, model_version, duration_seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)"
                " RETURNING *",
                (
                    now,
                    now,
                    job.guild_id,
                    job.channel_id,
                    job.user_id,
                    job.interaction_id,
                    job.application_id,
                    job.token,
                    format_timestamp(job.token_expires_at),
                    job.message_id,
                    job.request_json,
                    job.action,
                    job.parent_job_id,
                    job.extend_json,
                    job.expected_cost,
                    job.model_version,
                    job.duration_seconds,
                ),
            )
        if not rows:
            raise RuntimeError("the database did not return the new job")
        stored = Job.from_row(rows[0])
        log.debug("Job %d queued for user %d", stored.id, stored.user_id)
        return stored

    async def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        rows = await self._db.read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    async def by_status(self, *statuses: str) -> list[Job]:
        """Jobs in any of `statuses`, oldest first (by id). No statuses: an empty list."""
        unknown = set(statuses) - STATUSES
        if unknown:
            raise ValueError(f"unknown job status: {', '.join(sorted(unknown))}")
        if not statuses:
            return []
        rows = await self._db.read(
            f"SELECT * FROM jobs WHERE status IN ({_placeholders(len(statuses))}) ORDER BY id",
            statuses,
        )
        return [Job.from_row(row) for row in rows]

    async def line(self) -> list[Waiting]:
        """Every queued job (its id and user), in the order they will start (barring new
        arrivals). Ids only: the line is read often, and can be thousands long."""
        rows = await self._db.read(
            f"SELECT jobs.id, jobs.user_id FROM ({_LINE_SQL_NUMBERED}) AS line"
            " JOIN jobs ON jobs.id = line.id ORDER BY line.place"
        )
        return [Waiting(int(row[0]), int(row[1])) for row in rows]

    async def schema_version(self) -> int:
        """The newest migration applied to the database."""
        rows = await self._db.read("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    async def running_count(self) -> int:
        """Jobs running in all processes together."""
        rows = await self._db.read("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
        return int(rows[0][0])

    async def recent_for_user(self, user_id: int, limit: int = 10) -> list[Job]:
        """The user's `limit` most recently submitted jobs, newest first."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        rows = await self._db.read(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (user_id, limit),
        )
        return [Job.from_row(row) for row in rows]

    async def count_submitted_since(
        self, user_id: int, since: datetime, *, guild_id: int | None = None
    ) -> int:
        """How many of the user's jobs created at or after `since` count against the quota
        (with `guild_id`, only those in that server; else all of them).

        Every accepted job counts, whatever became of it, except a job cancelled before it
        ever started: it never reached Replicate, so it cost nothing. (A job that started,
        even one requeued and then cancelled, counts.)
        """
        in_guild = "" if guild_id is None else " AND guild_id = ?"
        rows = await self._db.read(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at >= ?"
            f" AND NOT (status = 'cancelled' AND attempts = 0){in_guild}",
            (user_id, format_timestamp(since), *([] if guild_id is None else [guild_id])),
        )
        return int(rows[0][0])

    async def last_submitted_at(self, user_id: int) -> datetime | None:
        """When the user's newest job was submitted (any status), or None if never."""
        rows = await self._db.read("SELECT MAX(created_at) FROM jobs WHERE user_id = ?", (user_id,))
        return _optional_time(rows[0][0])

    async def has_active_follow_up(self, user_id: int, parent_job_id: int, action: str) -> bool:
        """Whether the user already has a queued or running `action` job made from this parent
        (a second click of the same button then makes nothing)."""
        rows = await self._db.read(
            "SELECT 1 FROM jobs WHERE user_id = ? AND parent_job_id = ? AND action = ?"
            f" AND status IN {_ACTIVE_SQL} LIMIT 1",
            (user_id, parent_job_id, action),
        )
        return bool(rows)

    async def active_count_for_user(self, user_id: int) -> int:
        """How many of the user's jobs are queued or running."""
        rows = await self._db.read(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN {_ACTIVE_SQL}",
            (user_id,),
        )
        return int(rows[0][0])

    # -- spending, stats and server settings -----------------------------------------------

    async def gpu_seconds_per_audio_second(self, model_version: str, *, last: int) -> float | None:
        """GPU seconds each second of audio took, over the model's `last` jobs that reported a
        predict time; None before there are any."""
        rows = await self._db.read(
            "SELECT SUM(predict_time), SUM(duration_seconds) FROM (SELECT predict_time,"
            " duration_seconds FROM jobs WHERE model_version = ? AND predict_time IS NOT NULL"
            " AND duration_seconds > 0 ORDER BY id DESC LIMIT ?) AS recent",
            (model_version, last),
        )
        gpu, audio = rows[0][0], rows[0][1]
        return float(gpu) / float(audio) if gpu is not None and audio else None

    async def committed_spend(self, since: datetime, *, guild_id: int | None = None) -> float:
        """Dollars spent by jobs finished at or after `since` (their recorded cost) plus those
        expected of the jobs queued or running (their cost once recorded, else the estimate).
        With `guild_id`, only that server's jobs; else every job, DMs included."""
        in_guild = "" if guild_id is None else " AND guild_id = ?"
        rows = await self._db.read(
            f"SELECT SUM(CASE WHEN status IN {_ACTIVE_SQL}"
            " THEN COALESCE(cost_estimate, expected_cost, 0) ELSE COALESCE(cost_estimate, 0) END)"
            f" FROM jobs WHERE (status IN {_ACTIVE_SQL} OR finished_at >= ?){in_guild}",
            (format_timestamp(since), *([] if guild_id is None else [guild_id])),
        )
        return float(rows[0][0] or 0.0)

    async def guild_activity(self, guild_id: int, since: datetime) -> Activity:
        """Tracks delivered, jobs failed and dollars spent in a server since `since`."""
        rows = await self._db.read(
            "SELECT SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), SUM(COALESCE(cost_estimate, 0))"
            " FROM jobs WHERE guild_id = ? AND finished_at >= ?",
            (guild_id, format_timestamp(since)),
        )
        tracks, failures, spend = rows[0][0], rows[0][1], rows[0][2]
        return Activity(int(tracks or 0), int(failures or 0), float(spend or 0.0))

    async def delivery_seconds(self, guild_id: int, since: datetime) -> list[float]:
        """Seconds from command to delivered track, for a server's tracks delivered since."""
        rows = await self._db.read(
            "SELECT created_at, delivered_at FROM jobs WHERE guild_id = ? AND finished_at >= ?"
            " AND status = 'delivered' AND delivered_at IS NOT NULL",
            (guild_id, format_timestamp(since)),
        )
        return [(parse_timestamp(row[1]) - parse_timestamp(row[0])).total_seconds() for row in rows]

    async def top_members(
        self, guild_id: int, since: datetime, limit: int
    ) -> list[tuple[int, int]]:
        """(user id, tracks delivered) of a server's most active members since `since`."""
        rows = await self._db.read(
            "SELECT user_id, COUNT(*) AS tracks FROM jobs WHERE guild_id = ? AND finished_at >= ?"
            " AND status = 'delivered' GROUP BY user_id ORDER BY tracks DESC, user_id LIMIT ?",
            (guild_id, format_timestamp(since), limit),
        )
        return [(int(row[0]), int(row[1])) for row in rows]

    async def guild_settings(self, guild_id: int) -> GuildSettings | None:
        """What the server changed with /jamadmin config, or None if nothing."""
        rows = await self._db.read("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return GuildSettings.from_row(rows[0]) if rows else None

    async def save_guild_settings(self, guild_id: int, settings: GuildSettings, *, by: int) -> None:
        """Store the server's settings (all of them), recording who changed them."""
        async with self._db.write() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, daily_budget_usd, daily_quota,"
                " cooldown_seconds, max_duration, allowed_models, blocked_words, updated_at,"
                " updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE"
                " SET daily_budget_usd = excluded.daily_budget_usd,"
                " daily_quota = excluded.daily_quota, cooldown_seconds = excluded.cooldown_seconds,"
                " max_duration = excluded.max_duration, allowed_models = excluded.allowed_models,"
                " blocked_words = excluded.blocked_words, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by",
                (guild_id, *settings.columns(), self._timestamp(), by),
            )

    # -- bookkeeping that does not change the status --------------------------------------

    async def set_message_id(self, job_id: int, message_id: int) -> None:
        """Record the placeholder message's id. Raises JobNotFound for an unknown id."""
        async with self._db.write() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET message_id = ?, updated_at = ? WHERE id = ?",
                (message_id, self._timestamp(), job_id),
            )
        if not changed:
            raise JobNotFound(job_id)

    async def set_prediction(
        self, job_id: int, prediction_id: str, *, owner: str | None = None
    ) -> bool:
        """Record the Replicate prediction id of a running job, committed before returning.

        Returns False, recording nothing, if the job is no longer running (it was cancelled or
        failed meanwhile) or, with `owner`, no longer leased to that process (another one took
        it over): the caller then cancels that prediction itself.
        """
        async with self._db.write() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET prediction_id = ?, updated_at = ? WHERE id = ? AND status = ?"
                + _OWNED,
                (prediction_id, self._timestamp(), job_id, "running", owner, owner),
            )
        if changed:
            log.debug("Job %d: prediction %s", job_id, prediction_id)
        else:
            log.debug("Job %d is not running; prediction %s not recorded", job_id, prediction_id)
        return changed == 1

    async def record_result(
        self,
        job_id: int,
        *,
        seed: int | None,
        predict_time: float | None,
        cost_estimate: float | None,
    ) -> None:
        """Record what the prediction reported, whatever the job's status (it was paid for).

        Raises JobNotFound for an unknown id.
        """
        async with self._db.write() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET seed = ?, predict_time = ?, cost_estimate = ?, updated_at = ?"
                " WHERE id = ?",
                (seed, predict_time, cost_estimate, self._timestamp(), job_id),
            )
        if not changed:
            raise JobNotFound(job_id)

    # -- the line, leases and takeovers -------------------------------------------------

    async def claim_next(
        self,
        owner: str,
        *,
        cap: int,
        lease_seconds: float,
        starts_per_minute: int | None = None,
    ) -> Job | None:
        """Start the next job of the line for `owner`, if fewer than `cap` jobs are running
        in all processes and (with `starts_per_minute`) fewer than that many started in the
        last 60 s. One decision at a time across processes (the ``dispatch`` lock).

        queued → running: counts an attempt and an unfinished run, sets ``started_at``, the
        user's turn, and the lease. Returns the job as it now is, or None.
        """
        now = self._now()
        stamp = format_timestamp(now)
        # A read first (it takes no lock): most wake-ups find a full cap or an empty line.
        rows = await self._db.read(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'running'),"
            " EXISTS (SELECT 1 FROM jobs WHERE status = 'queued')"
        )
        if int(rows[0][0]) >= cap or not rows[0][1]:
            return None
        # notify: every process looks at the line again (and its share of the polls)
        async with self._db.write(locks=("dispatch",), notify=True) as tx:
            rows = await tx.fetch("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
            if int(rows[0][0]) >= cap:
                return None
            if starts_per_minute is not None:
                since = format_timestamp(now - timedelta(minutes=1))
                rows = await tx.fetch("SELECT COUNT(*) FROM jobs WHERE started_at > ?", (since,))
                if int(rows[0][0]) >= starts_per_minute:
                    return None
            rows = await tx.fetch(f"{_LINE_SQL} LIMIT 1")
            if not rows:
                return None
            rows = await tx.fetch(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " unfinished_runs = unfinished_runs + 1, lease_owner = ?, lease_expires_at = ?,"
                " turn = (SELECT COALESCE(MAX(turn), 0) + 1 FROM jobs), updated_at = ?"
                " WHERE id = ? AND status = 'queued' RETURNING *",
                (
                    stamp,
                    owner,
                    format_timestamp(now + timedelta(seconds=lease_seconds)),
                    stamp,
                    rows[0][0],
                ),
            )
        if not rows:
            return None
        job = Job.from_row(rows[0])
        log.debug("Job %d started (attempt %d) by %s", job.id, job.attempts, owner)
        return job

    async def start(self, job_id: int) -> Job | None:
        """queued → running for this very job (outside the line's order and the cap): counts
        an attempt and an unfinished run and sets ``started_at``. Returns the job as it now
        is, or None if it was not queued."""
        now = self._timestamp()
        async with self._db.write() as tx:
            rows = await tx.fetch(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " unfinished_runs = unfinished_runs + 1,"
                " turn = (SELECT COALESCE(MAX(turn), 0) + 1 FROM jobs),"
                " updated_at = ? WHERE id = ? AND status = 'queued' RETURNING *",
                (now, now, job_id),
            )
        job = Job.from_row(rows[0]) if rows else None
        if job is not None:
            log.debug("Job %d started (attempt %d)", job.id, job.attempts)
        return job

    async def renew_leases(self, owner: str, lease_seconds: float) -> set[int]:
        """Extend every lease `owner` holds; the ids of the running jobs it still holds."""
        until = format_timestamp(self._now() + timedelta(seconds=lease_seconds))
        async with self._db.write() as tx:
            rows = await tx.fetch(
                "UPDATE jobs SET lease_expires_at = ? WHERE status = 'running'"
                " AND lease_owner = ? RETURNING id",
                (until, owner),
            )
        return {int(row[0]) for row in rows}

    async def has_expired_leases(self) -> bool:
        """Whether a running job's lease has expired (its process stopped renewing it)."""
        rows = await self._db.read(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'running'"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?))",
            (self._timestamp(),),
        )
        return bool(rows[0][0])

    async def take_over(
        self, owner: str, lease_seconds: float, *, expired_only: bool = True
    ) -> list[Job]:
        """Lease to `owner` the running jobs whose lease has expired, held by another process
        (one that died or stopped; without `expired_only`, every running job: for a start on a
        database no other process uses). Each counts one more unfinished run (it goes up at
        every start and takeover and down again only at a clean shutdown, so it counts the
        runs that ended in a crash). Returns them as they now are, oldest first."""
        now = self._now()
        # Never its own: a process whose lease lapsed while it still runs the job renews it.
        expired = (
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
            " AND (lease_owner IS NULL OR lease_owner <> ?)"
            if expired_only
            else ""
        )
        stamps = [format_timestamp(now), owner] if expired_only else []
        async with self._db.write() as tx:
            # Several processes may look at once: each takes the rows no other is taking.
            rows = await tx.fetch(
                "UPDATE jobs SET lease_owner = ?, lease_expires_at = ?,"
                " unfinished_runs = unfinished_runs + 1, updated_at = ?"
                f" WHERE id IN (SELECT id FROM jobs WHERE status = 'running'{expired}"
                f"{self._db.skip_locked}) AND status = 'running'{expired} RETURNING *",
                (
                    owner,
                    format_timestamp(now + timedelta(seconds=lease_seconds)),
                    format_timestamp(now),
                    *stamps,
                    *stamps,
                ),
            )
        return sorted((Job.from_row(row) for row in rows), key=lambda job: job.id)

    # -- status transitions ---------------------------------------------------------------

    async def release_runs(self, job_ids: Iterable[int], *, owner: str | None = None) -> None:
        """A clean shutdown: these running jobs' current runs did not crash, and (with
        `owner`) their leases end now, so another process may take them over at once."""
        ids = list(job_ids)
        if not ids:
            return
        async with self._db.write(notify=True) as tx:
            await tx.execute(
                "UPDATE jobs SET unfinished_runs = unfinished_runs - 1"
                f" WHERE id IN ({_placeholders(len(ids))}) AND status = 'running'"
                " AND unfinished_runs > 0",
                ids,
            )
            if owner is not None:
                await tx.execute(
                    "UPDATE jobs SET lease_expires_at = ?"
                    f" WHERE id IN ({_placeholders(len(ids))}) AND status = 'running'"
                    " AND lease_owner = ?",
                    (self._timestamp(), *ids, owner),
                )

    async def mark_delivering(self, job_id: int, *, owner: str | None = None) -> bool:
        """Record the intent to post a running job's track, before posting it.

        False if the job is no longer running (cancelled meanwhile: don't post) or, with
        `owner`, no longer leased to that process. Once marked, a cancel is refused (the track
        is on its way) and stays so; marking again is harmless.
        """
        async with self._db.write() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET delivering_at = COALESCE(delivering_at, ?), updated_at = ?"
                " WHERE id = ? AND status = 'running'" + _OWNED,
                (self._timestamp(), self._timestamp(), job_id, owner, owner),
            )
        return changed == 1

    async def deliver(self, job_id: int, *, message_id: int, channel_id: int) -> bool:
        """running → delivered, recording where the track was posted. True only once."""
        now = self._timestamp()
        async with self._db.write(notify=True) as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'delivered', token = '', delivered_message_id = ?,"
                " delivered_channel_id = ?, delivered_at = ?, finished_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'running'",
                (message_id, channel_id, now, now, now, job_id),
            )
        self._log_transition(job_id, "delivered", changed == 1)
        return changed == 1

    async def fail(self, job_id: int, *, error: str, detail: str) -> bool:
        """queued|running → failed, with the user-facing `error` and the `detail` for logs."""
        now = self._timestamp()
        async with self._db.write(notify=True) as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'failed', token = '', error = ?, error_detail = ?,"
                f" finished_at = ?, updated_at = ? WHERE id = ? AND status IN {_ACTIVE_SQL}",
                (error, detail, now, now, job_id),
            )
        self._log_transition(job_id, "failed", changed == 1)
        return changed == 1

    async def cancel(self, job_id: int) -> Job | None:
        """queued|running → cancelled, unless the track is already being delivered.

        Returns the job as it was just before (its status and prediction id tell the caller
        whether a prediction must be cancelled at Replicate), or None if it was not active or
        its delivery had begun (``delivering_at`` set).
        """
        now = self._timestamp()
        async with self._db.write(notify=True) as tx:
            rows = await tx.fetch("SELECT * FROM jobs WHERE id = ?", (job_id,))
            before = Job.from_row(rows[0]) if rows else None
            changed = (
                before is not None
                and await tx.execute(
                    "UPDATE jobs SET status = 'cancelled', token = '', finished_at = ?,"
                    f" updated_at = ? WHERE id = ? AND status IN {_ACTIVE_SQL}"
                    " AND delivering_at IS NULL",
                    (now, now, job_id),
                )
                == 1
            )
        self._log_transition(job_id, "cancelled", changed)
        return before if changed else None

    async def requeue(self, job_id: int) -> bool:
        """running → queued, clearing ``prediction_id``, ``started_at`` and the lease;
        attempts are kept.

        Only for a job whose prediction was never created (so nothing is being paid for):
        the job will start again with a fresh prediction.
        """
        async with self._db.write(notify=True) as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'queued', prediction_id = NULL, started_at = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE id = ? AND status = 'running'",
                (self._timestamp(), job_id),
            )
        self._log_transition(job_id, "queued again", changed == 1)
        return changed == 1

    # -- internals ------------------------------------------------------------------------

    def _timestamp(self) -> str:
        return format_timestamp(self._now())

    @staticmethod
    def _log_transition(job_id: int, outcome: str, changed: bool) -> None:
        if changed:
            log.debug("Job %d %s", job_id, outcome)
        else:
            log.debug("Job %d not %s: it was not in a status that allows it", job_id, outcome)


# With an owner, only while that process holds the job's lease (None: whoever holds it).
_OWNED = " AND (CAST(? AS TEXT) IS NULL OR lease_owner = ?)"
_LINE_SQL_NUMBERED = (
    "SELECT line.id, ROW_NUMBER() OVER () AS place FROM (" + _LINE_SQL + ") AS line"
)
