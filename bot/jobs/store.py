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
* Timestamps are stored as fixed-width ISO-8601 UTC text (see ``bot.jobs.migrate``): readable
  in the ``sqlite3`` shell, ordered as plain strings, and cast directly to ``TIMESTAMPTZ`` by
  Postgres. In Python every datetime is timezone-aware UTC; naive ones are refused.
* The interaction token is never logged and never shown in ``repr``; aiosqlite's own debug
  records, which repeat each query's parameters, are dropped for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast, get_args

import aiosqlite

from bot.jobs.migrate import format_timestamp, migrate, parse_timestamp

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


class JobNotFound(LookupError):
    """No job has the given id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


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
        return cls(
            id=row["id"],
            created_at=parse_timestamp(row["created_at"]),
            updated_at=parse_timestamp(row["updated_at"]),
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            user_id=row["user_id"],
            interaction_id=row["interaction_id"],
            application_id=row["application_id"],
            token=row["token"],
            token_expires_at=parse_timestamp(row["token_expires_at"]),
            message_id=row["message_id"],
            request_json=row["request_json"],
            status=cast(JobStatus, status),
            prediction_id=row["prediction_id"],
            attempts=row["attempts"],
            seed=row["seed"],
            started_at=_optional_time(row["started_at"]),
            finished_at=_optional_time(row["finished_at"]),
            predict_time=row["predict_time"],
            cost_estimate=row["cost_estimate"],
            error=row["error"],
            error_detail=row["error_detail"],
            delivered_message_id=row["delivered_message_id"],
            delivered_channel_id=row["delivered_channel_id"],
            delivered_at=_optional_time(row["delivered_at"]),
        )


@dataclass(frozen=True)
class NewJob:
    """What the command handler knows when it accepts a /music command.

    ``request_json`` is the validated request serialized as JSON; the store keeps it as opaque
    text. ``guild_id`` is None for a command sent in a DM.
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

    def __init__(self, db: aiosqlite.Connection, *, now: Callable[[], datetime] = utc_now) -> None:
        """Wrap an open, migrated connection; use :meth:`open` instead."""
        self._db: aiosqlite.Connection | None = db
        self._now = now
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        now: Callable[[], datetime] = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> JobStore:
        """Open (creating it and its folder if needed) and migrate the database at `path`.

        `now` is the clock used for every timestamp; tests inject a fixed one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
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
        except BaseException:
            await db.close()
            raise
        log.debug("Opened job database %s", path)
        return cls(db, now=now)

    async def close(self) -> None:
        """Close the connection. Safe to call twice."""
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()

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

    async def add(self, job: NewJob) -> Job:
        """Store a new job with status ``queued`` and return it as stored."""
        now = self._timestamp()
        async with self._write() as db:
            async with db.execute(
                "INSERT INTO jobs (created_at, updated_at, guild_id, channel_id, user_id,"
                " interaction_id, application_id, token, token_expires_at, message_id,"
                " request_json, status, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0)",
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
                ),
            ) as cursor:
                job_id = cursor.lastrowid
            if job_id is None:
                raise RuntimeError("the database did not return the new job's id")
            stored = await self._select(db, job_id)
        if stored is None:
            raise RuntimeError(f"job {job_id} vanished right after it was added")
        log.info("Job %d queued for user %d", stored.id, stored.user_id)
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

    async def count_submitted_since(self, user_id: int, since: datetime) -> int:
        """How many of the user's jobs created at or after `since` count against the quota.

        Every accepted job counts, whatever became of it, except a job cancelled before it
        ever started: it never reached Replicate, so it cost nothing. (A job that started,
        even one requeued and then cancelled, counts.)
        """
        rows = await self._read(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at >= ?"
            " AND NOT (status = 'cancelled' AND attempts = 0)",
            (user_id, format_timestamp(since)),
        )
        return int(rows[0][0])

    async def last_submitted_at(self, user_id: int) -> datetime | None:
        """When the user's newest job was submitted (any status), or None if never."""
        rows = await self._read("SELECT MAX(created_at) FROM jobs WHERE user_id = ?", (user_id,))
        return _optional_time(rows[0][0])

    async def active_count_for_user(self, user_id: int) -> int:
        """How many of the user's jobs are queued or running."""
        rows = await self._read(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN {_ACTIVE_SQL}",
            (user_id,),
        )
        return int(rows[0][0])

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
            log.info("Job %d: prediction %s", job_id, prediction_id)
        else:
            log.warning("Job %d is not running; prediction %s not recorded", job_id, prediction_id)
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

        Returns the job as it now is, or None if it was not queued.
        """
        now = self._timestamp()
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " updated_at = ? WHERE id = ? AND status = 'queued'",
                (now, now, job_id),
            )
            job = await self._select(db, job_id) if changed else None
        if job is not None:
            log.info("Job %d started (attempt %d)", job.id, job.attempts)
        return job

    async def deliver(self, job_id: int, *, message_id: int, channel_id: int) -> bool:
        """running → delivered, recording where the track was posted. True only once."""
        now = self._timestamp()
        async with self._write() as db:
            changed = await self._update(
                db,
                "UPDATE jobs SET status = 'delivered', delivered_message_id = ?,"
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
                "UPDATE jobs SET status = 'failed', error = ?, error_detail = ?,"
                f" finished_at = ?, updated_at = ? WHERE id = ? AND status IN {_ACTIVE_SQL}",
                (error, detail, now, now, job_id),
            )
        self._log_transition(job_id, "failed", changed)
        return changed

    async def cancel(self, job_id: int) -> Job | None:
        """queued|running → cancelled.

        Returns the job as it was just before (its status and prediction id tell the caller
        whether a prediction must be cancelled at Replicate), or None if it was not active.
        """
        now = self._timestamp()
        async with self._write() as db:
            before = await self._select(db, job_id)
            changed = before is not None and await self._update(
                db,
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, updated_at = ?"
                f" WHERE id = ? AND status IN {_ACTIVE_SQL}",
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

        Commits on success, rolls back on any exception (cancellation included).
        """
        async with self._lock:
            db = self._connection()
            try:
                # Inside the try: a call cancelled while BEGIN is queued still runs it.
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.OperationalError):  # the transaction had already ended
                    await db.execute("ROLLBACK")
                raise

    async def _read(self, sql: str, parameters: Iterable[Any]) -> list[sqlite3.Row]:
        async with self._lock:
            return list(await self._connection().execute_fetchall(sql, tuple(parameters)))

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
            log.info("Job %d %s", job_id, outcome)
        else:
            log.debug("Job %d not %s: it was not in a status that allows it", job_id, outcome)
