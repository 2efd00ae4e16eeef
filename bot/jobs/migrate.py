"""Versioned schema migrations for the job database.

Each migration is a file ``V<n>__<name>.sql`` in ``bot/jobs/migrations``, numbered 1, 2, 3, ...
without gaps. Pending migrations are applied in order, each inside its own transaction together
with its row in ``schema_version`` (version, name, applied_at), so a migration is either fully
applied and recorded or not applied at all. Applying is idempotent: a database that is already
up to date is left untouched, and two processes opening the same file at once apply each
migration once (the version is re-read after the write lock is taken).

The SQL files hold plain, portable SQL; the only SQLite-specific statement lives here
(``BEGIN IMMEDIATE``, which takes the write lock at the start of the transaction).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable

import aiosqlite

from bot.clock import format_timestamp, utc_now

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^V(?P<version>[1-9][0-9]*)__(?P<name>[A-Za-z0-9_]+)\.sql$")

_CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


class MigrationError(Exception):
    """The migration files or the database's recorded schema version are inconsistent."""


@dataclass(frozen=True)
class Migration:
    """One migration file: its version, its name (the part after ``__``) and its SQL."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read every ``V<n>__<name>.sql`` in `directory` (default: the packaged migrations).

    Raises MigrationError if two files share a version or the versions are not 1, 2, ... n.
    Other files in the directory are ignored.
    """
    folder = directory if directory is not None else resources.files("bot.jobs") / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"two migration files have version {version}")
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, found {versions}")
    return [found[v] for v in versions]


def split_statements(script: str) -> list[str]:
    """Split a SQL script into its statements, respecting quotes, comments and triggers.

    Needed because ``executescript`` commits any open transaction first, which would defeat
    applying a migration atomically.
    """
    statements: list[str] = []
    pending = ""
    pieces = script.split(";")
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    pending += pieces[-1]
    if pending.strip():
        statements.append(pending.strip())
    return statements


async def current_version(db: aiosqlite.Connection) -> int:
    """The highest applied migration version, 0 for a database that has none."""
    await db.execute(_CREATE_SCHEMA_VERSION)
    async with db.execute("SELECT MAX(version) FROM schema_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


async def migrate(
    db: aiosqlite.Connection,
    migrations: Sequence[Migration] | None = None,
    *,
    target: int | None = None,
    now: Callable[[], datetime] = utc_now,
) -> list[int]:
    """Apply the pending `migrations` (default: the packaged ones) up to `target` (default: all).

    `db` must be in autocommit mode (``isolation_level=None``). Returns the versions applied,
    in order. Raises MigrationError if the database is newer than the newest migration known
    here (running an older release against a newer database is refused).
    """
    if db.isolation_level is not None:
        raise MigrationError("the connection must be opened with isolation_level=None")
    all_migrations = list(migrations) if migrations is not None else load_migrations()
    latest = all_migrations[-1].version if all_migrations else 0
    target = latest if target is None else target
    if not 0 <= target <= latest:
        raise MigrationError(f"target version {target} is not between 0 and {latest}")

    version = await current_version(db)
    if version > latest:
        raise MigrationError(
            f"the database is at schema version {version} but this release knows only up to "
            f"{latest}: upgrade jambot"
        )

    applied: list[int] = []
    for migration in all_migrations:
        if migration.version > target:
            break
        if migration.version <= version:
            continue
        if await _apply(db, migration, now):
            applied.append(migration.version)
    if applied:
        log.info("Database migrated to schema version %d (applied %s)", target, applied)
    return applied


async def _apply(
    db: aiosqlite.Connection, migration: Migration, now: Callable[[], datetime]
) -> bool:
    """Apply one migration in a transaction; False if another connection applied it first."""
    try:
        await db.execute("BEGIN IMMEDIATE")
        async with db.execute(
            "SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)
        ) as cursor:
            if await cursor.fetchone() is not None:
                await db.execute("ROLLBACK")
                return False
        for statement in split_statements(migration.sql):
            await db.execute(statement)
        await db.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, format_timestamp(now())),
        )
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.OperationalError):  # the transaction already ended
            await db.execute("ROLLBACK")
        log.error("Migration V%d__%s failed; rolled back", migration.version, migration.name)
        raise
    log.info("Applied migration V%d__%s", migration.version, migration.name)
    return True
