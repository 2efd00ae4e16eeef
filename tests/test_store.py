"""The job store and its migrations, on both engines.

The store's behaviour is tested on a SQLite file and on a PostgreSQL database alike (the
`any_store` fixture: test ids end in ``[sqlite]`` or ``[postgres]``); what belongs to one engine
only (SQLite's files, WAL, ballast and process lock, migrations on an aiosqlite connection;
PostgreSQL's migrations by several processes at once, its schema and its connection errors) is
tested on that engine.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from bot.jobs import TERMINAL, Job, JobNotFound, JobStore, MigrationError, NewJob
from bot.jobs.migrate import (
    Migration,
    current_version,
    load_migrations,
    migrate,
    migrate_postgres,
    split_statements,
)
from bot.jobs.store import (
    DatabaseInUseError,
    StoreBusyError,
    StoreError,
    StoreFullError,
)
from tests.clock import START, Clock
from tests.conftest import fill_disk
from tests.pg import PostgresCluster, free_port

ENGINES = ["sqlite", "postgres"]
MIGRATIONS = [
    (1, "jobs"),
    (2, "costs_and_delivery"),
    (3, "supervision"),
    (4, "follow_ups"),
    (5, "spend_and_guild_settings"),
    (6, "leases_and_turns"),
]
TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OnNlY3JldC10b2tlbg"


def new_job(user_id: int = 42, interaction_id: int = 1000, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "guild_id": 7,
        "channel_id": 8,
        "user_id": user_id,
        "interaction_id": interaction_id,
        "application_id": 9,
        "token": TOKEN,
        "token_expires_at": START + timedelta(minutes=15),
        "request_json": '{"prompt": "lofi; rain", "duration": 8}',
    }
    values.update(overrides)
    return NewJob(**values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jambot.db"


@pytest.fixture
async def store(db_path: Path, clock: Clock) -> AsyncIterator[JobStore]:
    """A store on a SQLite file (for what only SQLite has)."""
    job_store = await JobStore.open(db_path, now=clock)
    yield job_store
    await job_store.close()


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, db_path: Path) -> str:
    """What `JobStore.open` takes for a fresh database of each engine: a SQLite file's URL,
    or a PostgreSQL database of this test's own (skipped where PostgreSQL isn't installed)."""
    if request.param == "sqlite":
        return f"sqlite:///{db_path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def any_store(target: str, clock: Clock) -> AsyncIterator[JobStore]:
    """A store on a fresh database of each engine, timed by `clock`."""
    job_store = await JobStore.open(target, now=clock)
    yield job_store
    await job_store.close()


def read_rows(path: Path, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """Query the file through a separate, plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, parameters).fetchall()
    finally:
        conn.close()


async def running_job(store: JobStore, **overrides: Any) -> Job:
    job = await store.add(new_job(**overrides))
    started = await store.start(job.id)
    assert started is not None
    return started


# -- migrations ---------------------------------------------------------------------------


async def test_open_migrates_an_empty_file(store: JobStore, db_path: Path) -> None:
    versions = read_rows(db_path, "SELECT version, name, applied_at FROM schema_version")
    assert versions == [
        (1, "jobs", "2025-03-14T20:48:00.123456Z"),
        (2, "costs_and_delivery", "2025-03-14T20:48:00.123456Z"),
        (3, "supervision", "2025-03-14T20:48:00.123456Z"),
        (4, "follow_ups", "2025-03-14T20:48:00.123456Z"),
        (5, "spend_and_guild_settings", "2025-03-14T20:48:00.123456Z"),
        (6, "leases_and_turns", "2025-03-14T20:48:00.123456Z"),
    ]
    columns = {row[1] for row in read_rows(db_path, "PRAGMA table_info(jobs)")}
    assert columns == {f.name for f in fields(Job)}
    assert read_rows(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_open_creates_missing_folders(tmp_path: Path) -> None:
    job_store = await JobStore.open(tmp_path / "data" / "bot" / "jambot.db")
    await job_store.close()
    assert (tmp_path / "data" / "bot" / "jambot.db").is_file()


async def test_reopening_does_not_reapply(db_path: Path, clock: Clock) -> None:
    first = await JobStore.open(db_path, now=clock)
    job = await first.add(new_job())
    await first.close()
    before = read_rows(db_path, "SELECT * FROM schema_version")

    clock.advance(days=1)
    second = await JobStore.open(db_path, now=clock)
    assert await second.get(job.id) == job
    await second.close()
    assert read_rows(db_path, "SELECT * FROM schema_version") == before

    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db) == []
        assert await current_version(db) == 6


async def test_migrates_a_v1_database_that_holds_jobs(db_path: Path, clock: Clock) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db, target=1) == [1]
        v1_columns = (
            "created_at, updated_at, guild_id, channel_id, user_id, interaction_id,"
            " application_id, token, token_expires_at, message_id, request_json, status,"
            " prediction_id, attempts, seed, started_at, finished_at"
        )
        await db.execute(
            f"INSERT INTO jobs ({v1_columns}) VALUES"
            " ('2025-03-01T10:00:00.000000Z', '2025-03-01T10:00:00.000000Z', NULL, 8, 42,"
            "  1001, 9, 'tok-1', '2025-03-01T10:15:00.000000Z', 555, '{\"prompt\": \"jazz\"}',"
            "  'queued', NULL, 0, NULL, NULL, NULL),"
            " ('2025-03-01T11:00:00.000000Z', '2025-03-01T11:01:00.000000Z', 7, 8, 42,"
            "  1002, 9, 'tok-2', '2025-03-01T11:15:00.000000Z', 556, '{\"prompt\": \"rock\"}',"
            "  'delivered', 'pred-2', 1, 77, '2025-03-01T11:00:01.000000Z',"
            "  '2025-03-01T11:01:00.000000Z')"
        )

    job_store = await JobStore.open(db_path, now=clock)
    try:
        queued = await job_store.get(1)
        delivered = await job_store.get(2)
    finally:
        await job_store.close()

    assert queued is not None
    assert queued.status == "queued"
    assert queued.guild_id is None
    assert queued.request_json == '{"prompt": "jazz"}'
    assert queued.created_at == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    assert (queued.predict_time, queued.cost_estimate) == (None, None)
    assert (queued.delivered_message_id, queued.delivered_channel_id) == (None, None)
    assert queued.delivered_at is None

    assert delivered is not None
    assert (delivered.prediction_id, delivered.seed, delivered.attempts) == ("pred-2", 77, 1)
    assert delivered.delivered_message_id == 556
    assert delivered.delivered_channel_id == 8
    assert delivered.delivered_at == datetime(2025, 3, 1, 11, 1, tzinfo=UTC)
    assert (queued.token, delivered.token) == ("tok-1", "")  # tokens of ended jobs erased
    assert (queued.unfinished_runs, queued.delivering_at) == (0, None)
    versions = [row[0] for row in read_rows(db_path, "SELECT version FROM schema_version")]
    assert versions == [1, 2, 3, 4, 5, 6]


async def test_a_failing_migration_is_rolled_back_whole(db_path: Path) -> None:
    migrations = [
        Migration(1, "one", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "two", "CREATE TABLE b (x INTEGER);\nINSERT INTO missing VALUES (1);"),
    ]
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        with pytest.raises(sqlite3.OperationalError, match="missing"):
            await migrate(db, migrations)
        assert await current_version(db) == 1
    tables = {row[0] for row in read_rows(db_path, "SELECT name FROM sqlite_master")}
    assert "a" in tables
    assert "b" not in tables


async def test_a_database_newer_than_the_code_is_refused(db_path: Path) -> None:
    job_store = await JobStore.open(db_path)
    await job_store.close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future', '2030-01-01T00:00:00Z')")
    conn.close()
    with pytest.raises(MigrationError, match="schema version 99"):
        await JobStore.open(db_path)


def test_packaged_migrations_are_numbered_from_one() -> None:
    assert [(m.version, m.name) for m in load_migrations()] == MIGRATIONS


def test_migration_files_with_a_gap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "V1__a.sql").write_text("SELECT 1;")
    (tmp_path / "V3__c.sql").write_text("SELECT 1;")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(MigrationError, match="without gaps"):
        load_migrations(tmp_path)


def test_split_statements_keeps_semicolons_in_strings_comments_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'c;d'; END;
    INSERT INTO t VALUES ('e;f')
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t VALUES ('e;f')"


# -- adding and reading -------------------------------------------------------------------


async def test_add_stores_a_queued_job(any_store: JobStore) -> None:
    job = await any_store.add(new_job(message_id=99))
    assert job.id == 1
    assert job.status == "queued"
    assert (job.attempts, job.prediction_id, job.started_at) == (0, None, None)
    assert job.created_at == job.updated_at == START
    assert job.token == TOKEN
    assert job.token_expires_at == START + timedelta(minutes=15)
    assert job.message_id == 99
    assert job.request_json == '{"prompt": "lofi; rain", "duration": 8}'
    assert not job.is_terminal
    assert await any_store.get(job.id) == job
    assert await any_store.get(12345) is None


async def test_a_dm_job_has_no_guild(any_store: JobStore) -> None:
    job = await any_store.add(new_job(guild_id=None))
    assert job.guild_id is None


async def test_the_token_is_never_in_a_repr_or_the_logs(
    any_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job = await running_job(any_store)
    await any_store.set_prediction(job.id, "pred-1")
    await any_store.deliver(job.id, message_id=1, channel_id=2)
    delivered = await any_store.get(job.id)
    assert delivered is not None
    assert TOKEN not in repr(delivered)
    assert TOKEN not in str(delivered)
    assert TOKEN not in repr(new_job())
    assert "token=" not in repr(delivered)
    assert TOKEN not in caplog.text


async def test_naive_datetimes_are_refused(any_store: JobStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        new_job(token_expires_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await any_store.count_submitted_since(42, datetime(2025, 1, 1))


async def test_set_message_id_and_unknown_ids(any_store: JobStore, clock: Clock) -> None:
    job = await any_store.add(new_job())
    clock.advance(seconds=1)
    await any_store.set_message_id(job.id, 555)
    updated = await any_store.get(job.id)
    assert updated is not None
    assert updated.message_id == 555
    assert updated.updated_at == START + timedelta(seconds=1)
    with pytest.raises(JobNotFound):
        await any_store.set_message_id(999, 1)
    with pytest.raises(JobNotFound):
        await any_store.record_result(999, seed=1, predict_time=1.0, cost_estimate=0.1)


# -- transitions --------------------------------------------------------------------------


async def test_start_runs_a_queued_job_once(any_store: JobStore, clock: Clock) -> None:
    job = await any_store.add(new_job())
    clock.advance(seconds=2)
    started = await any_store.start(job.id)
    assert started is not None
    assert started.status == "running"
    assert started.attempts == 1
    assert started.started_at == START + timedelta(seconds=2)
    assert await any_store.start(job.id) is None
    assert await any_store.start(999) is None


async def test_set_prediction_is_committed_before_it_returns(
    any_store: JobStore, target: str, clock: Clock
) -> None:
    job = await running_job(any_store)
    assert await any_store.set_prediction(job.id, "pred-abc") is True
    async with await JobStore.open(target, now=clock) as other:  # another connection
        seen = await other.get(job.id)
    assert seen is not None
    assert seen.prediction_id == "pred-abc"


async def test_set_prediction_on_a_cancelled_job_is_refused(any_store: JobStore) -> None:
    job = await running_job(any_store)
    assert await any_store.cancel(job.id) is not None
    assert await any_store.set_prediction(job.id, "pred-late") is False
    cancelled = await any_store.get(job.id)
    assert cancelled is not None
    assert cancelled.prediction_id is None


async def test_record_result(any_store: JobStore) -> None:
    job = await running_job(any_store)
    await any_store.record_result(job.id, seed=1234, predict_time=12.5, cost_estimate=0.0175)
    stored = await any_store.get(job.id)
    assert stored is not None
    assert (stored.seed, stored.predict_time, stored.cost_estimate) == (1234, 12.5, 0.0175)


async def test_deliver_happens_once(any_store: JobStore, clock: Clock) -> None:
    job = await running_job(any_store)
    clock.advance(seconds=30)
    assert await any_store.deliver(job.id, message_id=777, channel_id=888) is True
    assert await any_store.deliver(job.id, message_id=778, channel_id=889) is False
    delivered = await any_store.get(job.id)
    assert delivered is not None
    assert delivered.status == "delivered"
    assert delivered.is_terminal
    assert (delivered.delivered_message_id, delivered.delivered_channel_id) == (777, 888)
    assert delivered.delivered_at == delivered.finished_at == START + timedelta(seconds=30)

    assert await any_store.fail(job.id, error="Oops.", detail="late") is False
    assert await any_store.cancel(job.id) is None
    assert await any_store.requeue(job.id) is False
    assert await any_store.start(job.id) is None
    assert await any_store.get(job.id) == delivered


async def test_a_queued_job_cannot_be_delivered(any_store: JobStore) -> None:
    job = await any_store.add(new_job())
    assert await any_store.deliver(job.id, message_id=1, channel_id=2) is False
    assert await any_store.deliver(999, message_id=1, channel_id=2) is False


@pytest.mark.parametrize("running", [False, True])
async def test_fail_from_queued_or_running(any_store: JobStore, running: bool) -> None:
    job = await (running_job(any_store) if running else any_store.add(new_job()))
    error = "MusicGen is unavailable right now; please try again later."
    assert await any_store.fail(job.id, error=error, detail="HTTP 503 from Replicate") is True
    failed = await any_store.get(job.id)
    assert failed is not None
    assert failed.status == "failed"
    assert (failed.error, failed.error_detail) == (error, "HTTP 503 from Replicate")
    assert failed.finished_at is not None
    assert await any_store.fail(job.id, error="Again.", detail="again") is False
    assert await any_store.deliver(job.id, message_id=1, channel_id=2) is False


async def test_cancel_returns_the_job_as_it_was(any_store: JobStore) -> None:
    queued = await any_store.add(new_job(interaction_id=1))
    before = await any_store.cancel(queued.id)
    assert before == queued
    after = await any_store.get(queued.id)
    assert after is not None
    assert after.status == "cancelled"
    assert after.finished_at is not None
    assert await any_store.cancel(queued.id) is None

    running = await running_job(any_store, interaction_id=2)
    await any_store.set_prediction(running.id, "pred-live")
    before = await any_store.cancel(running.id)
    assert before is not None
    assert (before.status, before.prediction_id) == ("running", "pred-live")
    assert await any_store.deliver(running.id, message_id=1, channel_id=2) is False
    assert await any_store.cancel(999) is None


async def test_requeue_puts_a_running_job_back(any_store: JobStore) -> None:
    job = await running_job(any_store)
    await any_store.set_prediction(job.id, "pred-never-created")
    assert await any_store.requeue(job.id) is True
    requeued = await any_store.get(job.id)
    assert requeued is not None
    assert requeued.status == "queued"
    assert (requeued.prediction_id, requeued.started_at, requeued.attempts) == (None, None, 1)
    assert await any_store.requeue(job.id) is False
    again = await any_store.start(job.id)
    assert again is not None
    assert again.attempts == 2


async def test_racing_terminal_transitions_have_one_winner(any_store: JobStore) -> None:
    for interaction_id in range(10):
        job = await running_job(any_store, interaction_id=interaction_id)
        delivered, failed, cancelled = await asyncio.gather(
            any_store.deliver(job.id, message_id=1, channel_id=2),
            any_store.fail(job.id, error="Failed.", detail="race"),
            any_store.cancel(job.id),
        )
        wins = [delivered, failed, cancelled is not None]
        assert wins.count(True) == 1
        final = await any_store.get(job.id)
        assert final is not None
        assert final.status == ("delivered", "failed", "cancelled")[wins.index(True)]


async def test_two_connections_racing_have_one_winner(
    any_store: JobStore, target: str, clock: Clock
) -> None:
    other = await JobStore.open(target, now=clock)
    try:
        for interaction_id in range(5):
            job = await running_job(any_store, interaction_id=interaction_id)
            results = await asyncio.gather(
                any_store.deliver(job.id, message_id=1, channel_id=2),
                other.fail(job.id, error="Failed.", detail="race"),
                other.cancel(job.id),
                any_store.cancel(job.id),
            )
            assert [r is True or isinstance(r, Job) for r in results].count(True) == 1
            final = await other.get(job.id)
            assert final is not None
            assert final.status in TERMINAL
    finally:
        await other.close()


# -- queries ------------------------------------------------------------------------------


async def test_by_status_is_ordered_by_id(any_store: JobStore) -> None:
    ids = [(await any_store.add(new_job(interaction_id=i))).id for i in range(4)]
    await any_store.start(ids[1])
    await any_store.start(ids[3])
    await any_store.fail(ids[0], error="Failed.", detail="x")
    assert [j.id for j in await any_store.by_status("queued")] == [ids[2]]
    assert [j.id for j in await any_store.by_status("running", "queued")] == ids[1:]
    assert [j.id for j in await any_store.by_status(*TERMINAL)] == [ids[0]]
    assert await any_store.by_status() == []
    with pytest.raises(ValueError, match="unknown job status"):
        await any_store.by_status("done")


async def test_per_user_queries(any_store: JobStore, clock: Clock) -> None:
    assert await any_store.last_submitted_at(42) is None
    assert await any_store.recent_for_user(42) == []

    a = await any_store.add(new_job(user_id=42, interaction_id=1))
    clock.advance(minutes=1)
    b = await any_store.add(new_job(user_id=42, interaction_id=2))
    clock.advance(minutes=1)
    other = await any_store.add(new_job(user_id=43, interaction_id=3))
    clock.advance(minutes=1)
    c = await any_store.add(new_job(user_id=42, interaction_id=4))

    assert [j.id for j in await any_store.recent_for_user(42)] == [c.id, b.id, a.id]
    assert [j.id for j in await any_store.recent_for_user(42, limit=2)] == [c.id, b.id]
    assert [j.id for j in await any_store.recent_for_user(43)] == [other.id]
    assert await any_store.last_submitted_at(42) == c.created_at
    assert await any_store.active_count_for_user(42) == 3

    await any_store.start(a.id)
    await any_store.deliver(a.id, message_id=1, channel_id=2)
    assert await any_store.active_count_for_user(42) == 2
    assert await any_store.count_submitted_since(42, START) == 3
    assert await any_store.count_submitted_since(42, b.created_at) == 2  # inclusive
    assert await any_store.count_submitted_since(42, c.created_at + timedelta(microseconds=1)) == 0


async def test_quota_count_skips_only_jobs_cancelled_before_starting(any_store: JobStore) -> None:
    cancelled_queued = await any_store.add(new_job(interaction_id=1))
    await any_store.cancel(cancelled_queued.id)
    cancelled_running = await running_job(any_store, interaction_id=2)
    await any_store.cancel(cancelled_running.id)
    requeued_then_cancelled = await running_job(any_store, interaction_id=3)
    await any_store.requeue(requeued_then_cancelled.id)
    await any_store.cancel(requeued_then_cancelled.id)
    failed = await any_store.add(new_job(interaction_id=4))
    await any_store.fail(failed.id, error="Failed.", detail="x")

    assert await any_store.count_submitted_since(42, START) == 3
    assert await any_store.last_submitted_at(42) == START
    assert await any_store.active_count_for_user(42) == 0


async def test_a_closed_store_refuses_calls(target: str) -> None:
    job_store = await JobStore.open(target)
    await job_store.close()
    await job_store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await job_store.get(1)


async def test_store_as_context_manager(target: str) -> None:
    async with await JobStore.open(target) as job_store:
        job = await job_store.add(new_job())
    with pytest.raises(RuntimeError, match="closed"):
        await job_store.get(job.id)
    async with await JobStore.open(target) as reopened:
        assert [(j.id, j.status) for j in await reopened.by_status("queued")] == [
            (job.id, "queued")
        ]


@pytest.mark.parametrize("yields", range(8))
async def test_a_cancelled_call_leaves_no_transaction_open(
    any_store: JobStore, yields: int
) -> None:
    job = await running_job(any_store)
    task = asyncio.create_task(any_store.deliver(job.id, message_id=1, channel_id=2))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    [outcome] = await asyncio.gather(task, return_exceptions=True)
    after = await any_store.get(job.id)
    assert after is not None
    if outcome is True:
        assert after.status == "delivered"
    else:  # cancelled: the transaction either committed whole or not at all
        assert isinstance(outcome, asyncio.CancelledError)
        assert after.status in {"running", "delivered"}
    other = await any_store.add(new_job(interaction_id=2))
    assert await any_store.start(other.id) is not None


# -- safety at rest and under faults ----------------------------------------------------------


async def test_database_files_are_owner_only_even_if_they_were_not(db_path: Path) -> None:
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)
    async with await JobStore.open(db_path) as job_store:
        await job_store.add(new_job())
        for suffix in ("", "-wal", "-shm"):
            mode = (db_path.parent / f"{db_path.name}{suffix}").stat().st_mode & 0o777
            assert mode == 0o600, (suffix, oct(mode))


async def test_tokens_are_erased_when_a_job_ends(any_store: JobStore) -> None:
    delivered, failed, cancelled, waiting = [
        await running_job(any_store, interaction_id=n) for n in (1, 2, 3, 4)
    ]
    await any_store.deliver(delivered.id, message_id=1, channel_id=2)
    await any_store.fail(failed.id, error="no", detail="no")
    await any_store.cancel(cancelled.id)
    jobs = await any_store.by_status("running", *TERMINAL)
    tokens = {job.id: job.token for job in jobs}
    assert tokens == {delivered.id: "", failed.id: "", cancelled.id: "", waiting.id: TOKEN}


async def test_a_second_exclusive_open_is_refused_until_the_first_closes(db_path: Path) -> None:
    first = await JobStore.open(db_path, exclusive=True)
    with pytest.raises(DatabaseInUseError, match="another jambot process"):
        await JobStore.open(db_path, exclusive=True)
    await first.close()
    again = await JobStore.open(db_path, exclusive=True)
    await again.close()


async def test_a_held_write_lock_is_a_busy_error(db_path: Path) -> None:
    async with await JobStore.open(db_path, busy_timeout=0.05) as job_store:
        shell = sqlite3.connect(db_path, isolation_level=None)
        shell.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusyError):
                await job_store.add(new_job())
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        assert (await job_store.add(new_job())).status == "queued"  # nothing left half-done


async def test_a_full_disk_gives_up_the_reserve_and_refuses_new_jobs(tiny_disk: Path) -> None:
    async with await JobStore.open(tiny_disk / "jambot.db") as job_store:
        job = await running_job(job_store)
        filler = fill_disk(tiny_disk)
        with pytest.raises(StoreFullError):
            await job_store.add(new_job(interaction_id=2))
        assert job_store.full and not (tiny_disk / "jambot.db.reserve").exists()
        assert await job_store.deliver(job.id, message_id=1, channel_id=2)  # room to finish
        with pytest.raises(StoreFullError):  # still no new jobs
            await job_store.add(new_job(interaction_id=3))
        filler.unlink()
        assert (await job_store.add(new_job(interaction_id=4))).status == "queued"
        assert not job_store.full and (tiny_disk / "jambot.db.reserve").exists()


# -- PostgreSQL only --------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word"


async def pg_rows(url: str, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """Query the database through a separate, plain asyncpg connection."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *parameters)]
    finally:
        await conn.close()


def applied_migrations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("Applied migration")
    ]


async def test_postgres_two_processes_opening_an_empty_database_migrate_it_once(
    pg_url: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.jobs.migrate")
    first, second = await asyncio.gather(
        JobStore.open(pg_url, now=clock), JobStore.open(pg_url, now=clock)
    )
    try:
        assert sorted(applied_migrations(caplog)) == [
            f"Applied migration V{version}__{name}" for version, name in MIGRATIONS
        ]
        assert await first.schema_version() == await second.schema_version() == 6
        job = await first.add(new_job())
        assert await second.get(job.id) == job  # one database, seen by both
    finally:
        await asyncio.gather(first.close(), second.close())

    caplog.clear()
    clock.advance(days=1)
    async with await JobStore.open(pg_url, now=clock) as third:  # up to date: nothing to do
        assert await third.schema_version() == 6
    assert applied_migrations(caplog) == []
    versions = await pg_rows(
        pg_url, "SELECT version, name, applied_at FROM schema_version ORDER BY version"
    )
    assert versions == [(v, name, "2025-03-14T20:48:00.123456Z") for v, name in MIGRATIONS]


async def test_postgres_has_the_tables_columns_and_indexes_of_sqlite(
    pg_url: str, db_path: Path
) -> None:
    async with await JobStore.open(pg_url):
        pass
    async with await JobStore.open(db_path):
        pass
    pg_columns = set(
        await pg_rows(
            pg_url,
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'",
        )
    )
    assert {column for table, column in pg_columns if table == "jobs"} == {
        f.name for f in fields(Job)
    }
    tables = read_rows(
        db_path, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
    )
    sqlite_columns = {
        (table, row[1])
        for (table,) in tables
        for row in read_rows(db_path, f"PRAGMA table_info({table})")
    }
    assert pg_columns == sqlite_columns

    pg_indexes = set(
        await pg_rows(
            pg_url,
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND indexname NOT LIKE '%\\_pkey'",
        )
    )
    sqlite_indexes = set(
        read_rows(
            db_path,
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'"
            " AND name NOT LIKE 'sqlite_autoindex%'",
        )
    )
    assert pg_indexes == sqlite_indexes
    assert ("jobs", "jobs_user_turn") in pg_indexes


def error_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


async def test_postgres_an_unreachable_server_is_named_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://jam:{PASSWORD}@127.0.0.1:{free_port()}/jambot"  # nothing listens
    with pytest.raises(StoreError) as raised:
        await JobStore.open(url)
    assert raised.value.kind == "unreachable"
    assert "127.0.0.1" in str(raised.value)
    assert "jam:***@127.0.0.1" in str(raised.value)
    for exc in error_chain(raised.value):
        assert PASSWORD not in str(exc)
        assert PASSWORD not in repr(exc)
    assert PASSWORD not in caplog.text


async def test_postgres_a_database_that_does_not_exist_is_a_store_error(
    pg_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = pg_cluster.url("jambot_no_such_database").replace(
        "://postgres@", f"://postgres:{PASSWORD}@"
    )
    with pytest.raises(StoreError, match="no such database") as raised:
        await JobStore.open(url)
    assert raised.value.kind == "broken"  # not worth retrying: it won't appear by itself
    assert "127.0.0.1" in str(raised.value)
    for exc in error_chain(raised.value):
        assert PASSWORD not in str(exc)
    assert PASSWORD not in caplog.text


async def test_postgres_a_database_newer_than_the_code_is_refused(pg_url: str) -> None:
    async with await JobStore.open(pg_url):
        pass
    await pg_rows(
        pg_url, "INSERT INTO schema_version VALUES (99, 'future', '2030-01-01T00:00:00Z')"
    )
    with pytest.raises(MigrationError, match="schema version 99"):
        await JobStore.open(pg_url)


async def test_postgres_a_failing_migration_is_rolled_back_whole(pg_url: str) -> None:
    migrations = [
        Migration(1, "one", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "two", "CREATE TABLE b (x INTEGER);\nINSERT INTO missing VALUES (1);"),
    ]
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(asyncpg.exceptions.UndefinedTableError, match="missing"):
            await migrate_postgres(conn, migrations)
        assert await conn.fetchval("SELECT MAX(version) FROM schema_version") == 1
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    finally:
        await conn.close()
    assert "a" in tables
    assert "b" not in tables


async def test_postgres_a_held_table_lock_is_reported_busy(pg_url: str) -> None:
    async with await JobStore.open(pg_url) as job_store:
        conn = await asyncpg.connect(pg_url)
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")  # an operator's lock
            problem = await job_store.database.write_lock_problem(0.2)
            await transaction.rollback()
        finally:
            await conn.close()
        assert problem is not None
        assert problem.startswith("job store busy")
        assert await job_store.database.write_lock_problem(0.2) is None
