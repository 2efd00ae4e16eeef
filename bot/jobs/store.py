"""Durable job records: every accepted /music command, from ``queued`` to one terminal status.

Storage is one SQLite file reached through aiosqlite rather than SQLAlchemy: it is a small
dependency, it is async (the event loop never blocks on disk), and a community bot on a small
VPS needs nothing more than one file. The SQL is kept plain and portable (``?`` placeholders,
standard types, ``BEGIN IMMEDIATE`` as the only SQLite-specific statement) so that a Postgres
backend can be added behind the same API later.

Guarantees:

* Every change is committed before the method returns, so a process that restarts right after
  (for example after ``set_prediction``) finds it on disk. The file runs in WAL mode with
  ``synchronous=FULL``: a few writes per job are cheap, and a committed prediction id must
  survive a power cut, or the prediction could be paid for twice.
* Every status change is one transaction around a guarded ``UPDATE ... WHERE status IN (...)``,
  so a job reaches exactly one terminal status even when the delivery, a failure and a user's
  cancel race each other, in this process or in another one sharing the file. The method
  returns whether its transition happened.
* Timestamps are stored as fixed-width ISO-8601 UTC text (see ``bot.clock``): readable
  in the ``sqlite3`` shell, ordered as plain strings, and cast directly to ``TIMESTAMPTZ`` by
  Postgres. In Python every datetime is timezone-aware UTC; naive ones are refused.
* A job's life is logged once, at INFO, by the scheduler that drives it; the transitions
  here are logged at DEBUG only, so each event is one line in an ordinary log.
* The interaction token is never logged and never shown in ``repr``; aiosqlite's own debug
  records, which repeat each query's parameters, are dropped for the same reason. A job's token
  is erased when the job ends, and the database files are created readable by their owner only.
* SQLite's failures reach callers as ``StoreError``s that say what kind they are: busy (another
  connection holds the write lock past the busy timeout: worth retrying), full (the disk or the
  database's page limit), or broken. Callers never catch ``sqlite3`` exceptions.
* A full disk must not strand the jobs already running: next to the database lies
  ``<file>.reserve``, a few MiB of ballast. The first "disk full" deletes it, so the writes that
  finish running jobs have room, while :meth:`add` refuses new jobs (StoreFullError) until the
  ballast can be written again, that is until the operator has freed space.
* ``open(..., exclusive=True)`` (what ``jambot run`` uses) holds an advisory lock on
  ``<file>.lock`` for as long as the store is open, so a second bot process on the same file
  refuses to start instead of resuming (and paying for) the same jobs twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

import aiosqlite

from bot.clock import format_timestamp, parse_timestamp, utc_now
from bot.jobs.guild_settings import GuildSettings
from bot.jobs.migrate import migrate

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "delivered", "failed", "cancelled"]
STATUSES: frozenset[JobStatus] = frozenset(get_args(JobStatus))
ACTIVE: frozenset[JobStatus] = frozenset({"queued", "running"})
TERMINAL: frozenset[JobStatus] = frozenset({"delivered", "failed", "cancelled"})


class _DropDebugRecords(logging.Filter):
    """Drops aiosqlite's debug records: they repeat every query's parameters, tokens included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_aiosqlite_log = logging.getLogger("aiosqlite")
if not any(isinstance(f, _DropDebugRecords) for f in _aiosqlite_log.filters):
    _aiosqlite_log.addFilter(_DropDebugRecords())

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another one's write lock before giving up."""

OWNER_ONLY = 0o600
RESERVE_BYTES = 4 * 1024 * 1024
"""Ballast kept on the database's disk, given up when it fills (see the module docstring)."""


class StoreError(Exception):
    """The database could not do what was asked. ``kind`` says whether retrying may help."""

    kind = "broken"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StoreBusyError(StoreError):
    """Another connection (a ``sqlite3`` shell, a backup tool) held the write lock too long."""

    kind = "busy"


class StoreFullError(StoreError):
    """The disk, or the database's size limit, is full: nothing new can be written."""

    kind = "full"


class DatabaseInUseError(StoreError):
    """Another process has this database open with ``exclusive=True``."""

    kind = "in use"


def _translate(exc: sqlite3.Error) -> StoreError:
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return StoreBusyError(f"database busy: {text}")
    if name.startswith("SQLITE_FULL") or "is full" in text:
        return StoreFullError(f"database full: {text}")
    return StoreError(f"database error: {text}")


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

    @property
    def is_terminal(self) -> bool:
        """Whether the job is delivered, failed or cancelled (it will never change again)."""
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
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
_OPTIONAL_TIMES = ("started_at", "finished_at", "delivered_at", "delivering_at")


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
    """Async access to the jobs table. Build one with ``await JobStore.open(path)``.

    One connection per store; calls are serialized on it, which also keeps one caller's
    transaction from seeing another's uncommitted writes. Other stores (or processes) on the
    same file are kept consistent by SQLite's locking.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        now: Callable[[], datetime] = utc_now,
        lock_fd: int | None = None,
        path: Path | None = None,
    ) -> None:
        """Wrap an open, migrated connection; use :meth:`open` instead."""
        self._db: aiosqlite.Connection | None = db
        self._now = now
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd
        self._reserve = _reserve_path(path) if path and path.name != ":memory:" else None
        self._full = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        now: Callable[[], datetime] = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        exclusive: bool = False,
    ) -> JobStore:
        """Open (creating it and its folder if needed) and migrate the database at `path`.

        `now` is the clock used for every timestamp; tests inject a fixed one. With
        `exclusive`, raise DatabaseInUseError if another process holds the file that way.
        Other failures to open or migrate raise StoreError.
        """
        path = Path(path)
        lock_fd = await asyncio.to_thread(_prepare_files, path, exclusive)
        try:
            db = await _connect(path, busy_timeout, now)
        except BaseException:
            _unlock(lock_fd)
            raise
        log.debug("Opened job database %s", path)
        return cls(db, now=now, lock_fd=lock_fd, path=path)

    async def close(self) -> None:
        """Close the connection (and release the process lock). Safe to call twice."""
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        _unlock(lock_fd)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- creating and reading -------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Whether the disk filled up and new jobs are refused until space is freed."""
        return self._full

    async def add(self, job: NewJob) -> Job:
        """Store a new job with status ``queued`` and return it as stored.

        Raises StoreFullError while the disk is full (see the module docstring).
        """
        if self._full:
            await self._try_to_recover_space()
        now = self._timestamp()
        async with self._write() as db:
            async with db.execute(
                "INSERT INTO jobs (created_at, updated_at, guild_id, channel_id, user_id,"
                " interaction_id, application_id, token, token_expires_at, message_id,"
                " request_json, status, attempts, action, parent_job_id, extend_json,"
                " expected_cost, model_version, duration_seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)",
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
            ) as cursor:
                job_id = cursor.lastrowid
            if job_id is None:
                raise RuntimeError("the database did not return the new job's id")
            stored = await self._select(db, job_id)
        if stored is None:
            raise RuntimeError(f"job {job_id} vanished right after it was added")
        log.debug("Job %d queued for user %d", stored.id, stored.user_id)
        return stored

    async def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        rows = await self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    async def by_status(self, *statuses: str) -> list[Job]:
        """Jobs in any of `statuses`, oldest first (by id). No statuses: an empty list."""
        unknown = set(statuses) - STATUSES
        if unknown:
            raise ValueError(f"unknown job status: {', '.join(sorted(unknown))}")
        if not statuses:
            return []
        rows = await self._read(
            f"SELECT * FROM jobs WHERE status IN ({_placeholders(len(statuses))}) ORDER BY id",
            statuses,
        )
        return [Job.from_row(row) for row in rows]

    async def recent_for_user(self, user_id: int, limit: int = 10) -> list[Job]:
        """The user's `limit` most recently submitted jobs, newest first."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        rows = await self._read(
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
        rows = await self._read(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at >= ?"
            f" AND NOT (status = 'cancelled' AND attempts = 0){in_guild}",
            (user_id, format_timestamp(since), *([] if guild_id is None else [guild_id])),
        )
        return int(rows[0][0])

    async def last_submitted_at(self, user_id: int) -> datetime | None:
        """When the user's newest job was submitted (any status), or None if never."""
        rows = await self._read("SELECT MAX(created_at) FROM jobs WHERE user_id = ?", (user_id,))
        return _optional_time(rows[0][0])

    async def has_active_follow_up(self, user_id: int, parent_job_id: int, action: str) -> bool:
        """Whether the user already has a queued or running `action` job made from this parent
        (a second click of the same button then makes nothing)."""
        rows = await self._read(
            "SELECT 1 FROM jobs WHERE user_id = ? AND parent_job_id = ? AND action = ?"
            f" AND status IN {_ACTIVE_SQL} LIMIT 1",
            (user_id, parent_job_id, action),
        )
        return bool(rows)

    async def active_count_for_user(self, user_id: int) -> int:
        """How many of the user's jobs are queued or running."""
        rows = await self._read(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN {_ACTIVE_SQL}",
            (user_id,),
        )
        return int(rows[0][0])

    # -- spending, stats and server settings -----------------------------------------------

    async def gpu_seconds_per_audio_second(self, model_version: str, *, last: int) -> float | None:
        """GPU seconds each second of audio took, over the model's `last` jobs that reported a
        predict time; None before there are any."""
        rows = await self._read(
            "SELECT SUM(predict_time), SUM(duration_seconds) FROM (SELECT predict_time,"
            " duration_seconds FROM jobs WHERE model_version = ? AND predict_time IS NOT NULL"
            " AND duration_seconds > 0 ORDER BY id DESC LIMIT ?) AS recent",
            (model_version, last),
        )
        gpu, audio = rows[0]
        return float(gpu) / float(audio) if gpu is not None and audio else None

    async def committed_spend(self, since: datetime, *, guild_id: int | None = None) -> float:
        """Dollars spent by jobs finished at or after `since` (their recorded cost) plus those
        expected of the jobs queued or running (their cost once recorded, else the estimate).
        With `guild_id`, only that server's jobs; else every job, DMs included."""
        in_guild = "" if guild_id is None else " AND guild_id = ?"
        rows = await self._read(
            f"SELECT SUM(CASE WHEN status IN {_ACTIVE_SQL}"
            " THEN COALESCE(cost_estimate, expected_cost, 0) ELSE COALESCE(cost_estimate, 0) END)"
            f" FROM jobs WHERE (status IN {_ACTIVE_SQL} OR finished_at >= ?){in_guild}",
            (format_timestamp(since), *([] if guild_id is None else [guild_id])),
        )
        return float(rows[0][0] or 0.0)

    async def guild_activity(self, guild_id: int, since: datetime) -> Activity:
        """Tracks delivered, jobs failed and dollars spent in a server since `since`."""
        rows = await self._read(
            "SELECT SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), SUM(COALESCE(cost_estimate, 0))"
            " FROM jobs WHERE guild_id = ? AND finished_at >= ?",
            (guild_id, format_timestamp(since)),
        )
        tracks, failures, spend = rows[0]
        return Activity(int(tracks or 0), int(failures or 0), float(spend or 0.0))

    async def delivery_seconds(self, guild_id: int, since: datetime) -> list[float]:
        """Seconds from command to delivered track, for a server's tracks delivered since."""
        rows = await self._read(
            "SELECT created_at, delivered_at FROM jobs WHERE guild_id = ? AND finished_at >= ?"
            " AND status = 'delivered' AND delivered_at IS NOT NULL",
            (guild_id, format_timestamp(since)),
        )
        return [(parse_timestamp(row[1]) - parse_timestamp(row[0])).total_seconds() for row in rows]

    async def top_members(
        self, guild_id: int, since: datetime, limit: int
    ) -> list[tuple[int, int]]:
        """(user id, tracks delivered) of a server's most active members since `since`."""
        rows = await self._read(
            "SELECT user_id, COUNT(*) AS tracks FROM jobs WHERE guild_id = ? AND finished_at >= ?"
            " AND status = 'delivered' GROUP BY user_id ORDER BY tracks DESC, user_id LIMIT ?",
            (guild_id, format_timestamp(since), limit),
        )
        return [(int(row[0]), int(row[1])) for row in rows]

    async def guild_settings(self, guild_id: int) -> GuildSettings | None:
        """What the server changed with /jamadmin config, or None if nothing."""
        rows = await self._read("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return GuildSettings.from_row(rows[0]) if rows else None

    async def save_guild_settings(self, guild_id: int, settings: GuildSettings, *, by: int) -> None:
        """Store the server's settings (all of them), recording who changed them."""
        async with self._write() as db:
            await db.execute(
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
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET message_id = ?, updated_at = ? WHERE id = ?",
                (message_id, self._timestamp(), job_id),
            )
        if not changed:
            raise JobNotFound(job_id)

    async def set_prediction(self, job_id: int, prediction_id: str) -> bool:
        """Record the Replicate prediction id of a running job, committed before returning.

        Returns False, recording nothing, if the job is no longer running (it was cancelled or
        failed meanwhile): the caller then cancels that prediction itself.
        """
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET prediction_id = ?, updated_at = ? WHERE id = ? AND status = ?",
                (prediction_id, self._timestamp(), job_id, "running"),
            )
        if changed:
            log.debug("Job %d: prediction %s", job_id, prediction_id)
        else:
            log.debug("Job %d is not running; prediction %s not recorded", job_id, prediction_id)
        return changed

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
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET seed = ?, predict_time = ?, cost_estimate = ?, updated_at = ?"
                " WHERE id = ?",
                (seed, predict_time, cost_estimate, self._timestamp(), job_id),
            )
        if not changed:
            raise JobNotFound(job_id)

    # -- status transitions ---------------------------------------------------------------

    async def start(self, job_id: int) -> Job | None:
        """queued → running: count an attempt and set ``started_at`` (the latest attempt's).

        Also counts a run that has not finished (see :meth:`resume`). Returns the job as it now
        is, or None if it was not queued.
        """
        now = self._timestamp()
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " unfinished_runs = unfinished_runs + 1,"
                " updated_at = ? WHERE id = ? AND status = 'queued'",
                (now, now, job_id),
            )
            job = await self._select(db, job_id) if changed else None
        if job is not None:
            log.debug("Job %d started (attempt %d)", job.id, job.attempts)
        return job

    async def resume(self, job_id: int) -> Job | None:
        """Count one more run of a job left ``running`` by an earlier process.

        ``unfinished_runs`` goes up at every start and resume and down again only when a
        process shuts down cleanly (:meth:`release_runs`), so it counts the runs that ended in
        a crash. Returns the job as it now is, or None if it is not running.
        """
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET unfinished_runs = unfinished_runs + 1, updated_at = ?"
                " WHERE id = ? AND status = 'running'",
                (self._timestamp(), job_id),
            )
            return await self._select(db, job_id) if changed else None

    async def release_runs(self, job_ids: Iterable[int]) -> None:
        """A clean shutdown: these running jobs' current runs did not crash."""
        ids = list(job_ids)
        if not ids:
            return
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET unfinished_runs = unfinished_runs - 1"
                f" WHERE id IN ({_placeholders(len(ids))}) AND status = 'running'"
                " AND unfinished_runs > 0",
                ids,
            )

    async def mark_delivering(self, job_id: int) -> bool:
        """Record the intent to post a running job's track, before posting it.

        False if the job is no longer running (cancelled meanwhile: don't post). Once marked,
        a cancel is refused (the track is on its way) and stays so; marking again is harmless.
        """
        async with self._write() as db:
            return await self._update(
                db,
                "UPDATE jobs SET delivering_at = COALESCE(delivering_at, ?), updated_at = ?"
                " WHERE id = ? AND status = 'running'",
                (self._timestamp(), self._timestamp(), job_id),
            )

    async def deliver(self, job_id: int, *, message_id: int, channel_id: int) -> bool:
        """running → delivered, recording where the track was posted. True only once."""
        now = self._timestamp()
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'delivered', token = '', delivered_message_id = ?,"
                " delivered_channel_id = ?, delivered_at = ?, finished_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'running'",
                (message_id, channel_id, now, now, now, job_id),
            )
        self._log_transition(job_id, "delivered", changed)
        return changed

    async def fail(self, job_id: int, *, error: str, detail: str) -> bool:
        """queued|running → failed, with the user-facing `error` and the `detail` for logs."""
        now = self._timestamp()
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'failed', token = '', error = ?, error_detail = ?,"
                f" finished_at = ?, updated_at = ? WHERE id = ? AND status IN {_ACTIVE_SQL}",
                (error, detail, now, now, job_id),
            )
        self._log_transition(job_id, "failed", changed)
        return changed

    async def cancel(self, job_id: int) -> Job | None:
        """queued|running → cancelled, unless the track is already being delivered.

        Returns the job as it was just before (its status and prediction id tell the caller
        whether a prediction must be cancelled at Replicate), or None if it was not active or
        its delivery had begun (``delivering_at`` set).
        """
        now = self._timestamp()
        async with self._write() as db:
            before = await self._select(db, job_id)
            changed = before is not None and await self._update(
                db,
                "UPDATE jobs SET status = 'cancelled', token = '', finished_at = ?, updated_at = ?"
                f" WHERE id = ? AND status IN {_ACTIVE_SQL} AND delivering_at IS NULL",
                (now, now, job_id),
            )
        self._log_transition(job_id, "cancelled", changed)
        return before if changed else None

    async def requeue(self, job_id: int) -> bool:
        """running → queued, clearing ``prediction_id`` and ``started_at``; attempts are kept.

        Only for a job whose prediction was never created (so nothing is being paid for):
        the job will start again with a fresh prediction.
        """
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'queued', prediction_id = NULL, started_at = NULL,"
                " updated_at = ? WHERE id = ? AND status = 'running'",
                (self._timestamp(), job_id),
            )
        self._log_transition(job_id, "queued again", changed)
        return changed

    # -- internals ------------------------------------------------------------------------

    def _timestamp(self) -> str:
        return format_timestamp(self._now())

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the job store is closed")
        return self._db

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, holding the database's write lock from its first statement.

        Commits on success, rolls back on any exception (cancellation included); SQLite's
        failures are raised as StoreError.
        """
        async with self._lock:
            db = self._connection()
            try:
                # Inside the try: a call cancelled while BEGIN is queued still runs it.
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):  # the transaction had already ended
                    await db.execute("ROLLBACK")
                if not _is_translatable(exc):
                    raise
                error = _translate(exc)  # type: ignore[arg-type]
                if isinstance(error, StoreFullError):
                    await self._give_up_reserve()
                raise error from exc

    async def _give_up_reserve(self) -> None:
        if not self._full:
            log.error("The job database's disk is full: new jobs are refused until space is freed")
        self._full = True
        if self._reserve is not None:
            await asyncio.to_thread(_remove_reserve, self._reserve)

    async def _try_to_recover_space(self) -> None:
        if self._reserve is None or not await asyncio.to_thread(_write_reserve, self._reserve):
            raise StoreFullError("database full: the disk has no room for new jobs")
        log.warning("The job database's disk has room again: new jobs are accepted")
        self._full = False

    async def _read(self, sql: str, parameters: Iterable[Any]) -> list[sqlite3.Row]:
        async with self._lock:
            try:
                return list(await self._connection().execute_fetchall(sql, tuple(parameters)))
            except sqlite3.Error as exc:
                if _is_translatable(exc):
                    raise _translate(exc) from exc
                raise

    @staticmethod
    async def _select(db: aiosqlite.Connection, job_id: int) -> Job | None:
        async with db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else Job.from_row(row)

    @staticmethod
    async def _update(db: aiosqlite.Connection, sql: str, parameters: Iterable[Any]) -> bool:
        async with db.execute(sql, tuple(parameters)) as cursor:
            return cursor.rowcount == 1

    @staticmethod
    def _log_transition(job_id: int, outcome: str, changed: bool) -> None:
        if changed:
            log.debug("Job %d %s", job_id, outcome)
        else:
            log.debug("Job %d not %s: it was not in a status that allows it", job_id, outcome)


def _is_translatable(exc: BaseException) -> bool:
    """SQLite's operational failures (busy, full, I/O, corrupt); not our own bugs."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


async def _connect(
    path: Path, busy_timeout: float, now: Callable[[], datetime]
) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        async with db.execute("PRAGMA journal_mode = WAL") as cursor:
            row = await cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            log.warning("Could not switch %s to WAL mode (journal mode: %s)", path, row)
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db, now=now)
    except BaseException as exc:
        await db.close()
        if _is_translatable(exc):
            raise _translate(exc) from exc  # type: ignore[arg-type]
        raise
    return db


def _prepare_files(path: Path, exclusive: bool) -> int | None:
    """Create the folder, make the database files owner-only, take the process lock."""
    if path.name == ":memory:":
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, OWNER_ONLY))
    # SQLite gives the -wal and -shm files the database file's permissions.
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with suppress(FileNotFoundError):
            os.chmod(path.with_name(name), OWNER_ONLY)
    _write_reserve(_reserve_path(path))
    return _lock_exclusively(path) if exclusive else None


def _reserve_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.reserve")


def _write_reserve(path: Path) -> bool:
    """Make sure the ballast file exists at full size; False if the disk has no room."""
    with suppress(FileNotFoundError):
        if path.stat().st_size >= RESERVE_BYTES:
            return True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, OWNER_ONLY)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("could not write the disk reserve %s: %s", path, exc)
        with suppress(OSError):
            os.remove(path)
        return False
    return True


def _remove_reserve(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.remove(path)
        log.warning("Released the %d MiB disk reserve %s", RESERVE_BYTES >> 20, path)


def _lock_exclusively(path: Path) -> int:
    """An advisory lock on ``<file>.lock``, released by the kernel if the process dies."""
    lock_path = path.with_name(f"{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, OWNER_ONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUseError(
            f"another jambot process is already using {path} (locked by {lock_path})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
