"""The SQLite engine: one file, one bot process, one connection.

* Every change is committed before the call returns. The file runs in WAL mode with
  ``synchronous=FULL``: a committed prediction id must survive a power cut, or the prediction
  could be paid for twice.
* A write transaction takes the file's write lock at its first statement (``BEGIN
  IMMEDIATE``), so writers are serialised: the named locks of :meth:`SqliteDatabase.write`
  are held already, and :meth:`session` needs nothing more (the process lock below keeps other
  bot processes out).
* SQLite's failures reach callers as ``StoreError``s that say what kind they are: busy
  (another connection holds the write lock past the busy timeout: worth retrying), full (the
  disk or the database's page limit), or broken.
* A full disk must not strand the jobs already running: next to the database lies
  ``<file>.reserve``, a few MiB of ballast. The first "disk full" deletes it, so the writes that
  finish running jobs have room, while :meth:`check_room` refuses new jobs (StoreFullError)
  until the ballast can be written again, that is until the operator has freed space.
* ``exclusive=True`` (what ``jambot run`` uses) holds an advisory lock on ``<file>.lock`` for as
  long as the database is open, so a second bot process on the same file refuses to start
  instead of resuming (and paying for) the same jobs twice.
* The database files are created readable by their owner only; aiosqlite's own debug records,
  which repeat each query's parameters (tokens included), are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.jobs.database import Engine, Row
from bot.jobs.migrate import migrate
from bot.jobs.store_errors import (
    DatabaseInUseError,
    StoreBusyError,
    StoreError,
    StoreFullError,
)

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another one's write lock before giving up."""

OWNER_ONLY = 0o600
RESERVE_BYTES = 4 * 1024 * 1024
"""Ballast kept on the database's disk, given up when it fills (see the module docstring)."""


class _DropDebugRecords(logging.Filter):
    """Drops aiosqlite's debug records: they repeat every query's parameters, tokens included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_aiosqlite_log = logging.getLogger("aiosqlite")
if not any(isinstance(f, _DropDebugRecords) for f in _aiosqlite_log.filters):
    _aiosqlite_log.addFilter(_DropDebugRecords())


def translate(exc: sqlite3.Error) -> StoreError:
    """SQLite's failure as the StoreError kind callers act on."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return StoreBusyError(f"database busy: {text}")
    if name.startswith("SQLITE_FULL") or "is full" in text:
        return StoreFullError(f"database full: {text}")
    return StoreError(f"database error: {text}")


def is_translatable(exc: BaseException) -> bool:
    """SQLite's operational failures (busy, full, I/O, corrupt); not our own bugs."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class _Transaction:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        async with self._db.execute(sql, tuple(parameters)) as cursor:
            return int(cursor.rowcount)

    async def fetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        async with self._db.execute(sql, tuple(parameters)) as cursor:
            return list(await cursor.fetchall())


class SqliteDatabase:
    """One SQLite file through one aiosqlite connection; calls are serialised on it."""

    engine: Engine = "sqlite"
    shared = False
    skip_locked = ""  # one writer at a time: nothing is ever locked by another

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_fd: int | None) -> None:
        self._db: aiosqlite.Connection | None = db
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd
        self._path = path
        self._reserve = _reserve_path(path) if path.name != ":memory:" else None
        self._full = False
        self._listeners: list[Callable[[], None]] = []
        self.label = str(path)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        now: Callable[[], datetime],
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        exclusive: bool = False,
    ) -> SqliteDatabase:
        """Open (creating it and its folder if needed) and migrate the database at `path`."""
        path = Path(path)
        lock_fd = await asyncio.to_thread(_prepare_files, path, exclusive)
        try:
            db = await _connect(path, busy_timeout, now)
        except BaseException:
            unlock(lock_fd)
            raise
        log.debug("Opened job database %s", path)
        return cls(db, path, lock_fd)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        unlock(lock_fd)

    @property
    def full(self) -> bool:
        return self._full

    async def check_room(self) -> None:
        if not self._full:
            return
        if self._reserve is None or not await asyncio.to_thread(_write_reserve, self._reserve):
            raise StoreFullError("database full: the disk has no room for new jobs")
        log.warning("The job database's disk has room again: new jobs are accepted")
        self._full = False

    @contextlib.asynccontextmanager
    async def write(
        self, *, locks: Sequence[str] = (), notify: bool = False
    ) -> AsyncIterator[_Transaction]:
        """One write transaction holding the file's write lock from its first statement
        (which holds every named lock too: only one writer at a time)."""
        async with self._lock:
            db = self._connection()
            try:
                # Inside the try: a call cancelled while BEGIN is queued still runs it.
                await db.execute("BEGIN IMMEDIATE")
                yield _Transaction(db)
                await db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # the transaction had already ended
                    await db.execute("ROLLBACK")
                if not is_translatable(exc):
                    raise
                error = translate(exc)  # type: ignore[arg-type]
                if isinstance(error, StoreFullError):
                    await self._give_up_reserve()
                raise error from exc
        if notify:
            for callback in self._listeners:
                asyncio.get_running_loop().call_soon(callback)

    @contextlib.asynccontextmanager
    async def session(self, *locks: str) -> AsyncIterator[None]:
        """Nothing to hold: one process owns the file (its callers serialise themselves)."""
        yield

    async def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            try:
                return list(await self._connection().execute_fetchall(sql, tuple(parameters)))
            except sqlite3.Error as exc:
                if is_translatable(exc):
                    raise translate(exc) from exc
                raise

    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def start_listening(self) -> None:
        """Nothing to listen to: no other process writes to this file."""

    async def write_lock_problem(self, within: float) -> str | None:
        return await asyncio.to_thread(_write_lock_problem, self._path, within)

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the job store is closed")
        return self._db

    async def _give_up_reserve(self) -> None:
        if not self._full:
            log.error("The job database's disk is full: new jobs are refused until space is freed")
        self._full = True
        if self._reserve is not None:
            await asyncio.to_thread(_remove_reserve, self._reserve)


async def _connect(
    path: Path, busy_timeout: float, now: Callable[[], datetime]
) -> aiosqlite.Connection:
    try:
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise translate(exc) from exc
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
        if is_translatable(exc):
            raise translate(exc) from exc  # type: ignore[arg-type]
        raise
    return db


def _write_lock_problem(database: Path, within: float) -> str | None:
    """Whether a writer gets the database's write lock within `within` seconds.

    In WAL mode a read never waits for a writer, so a read can't see another connection (a
    `sqlite3` shell mid-transaction, a backup) holding the write lock, though every job's next
    write would wait on it. Taking the lock and letting it go at once writes nothing. Its own
    short-lived connection keeps the probe from queueing behind, or holding up, the store's,
    which waits much longer for a lock.
    """
    try:
        db = sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=rw", uri=True, timeout=within, isolation_level=None
        )
    except sqlite3.Error as exc:
        return f"job store broken: {exc}"
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return "job store busy: another connection holds its write lock"
        return f"job store broken: {exc}"
    finally:
        db.close()
    return None


def _prepare_files(path: Path, exclusive: bool) -> int | None:
    """Create the folder, make the database files owner-only, take the process lock."""
    if path.name == ":memory:":
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, OWNER_ONLY))
    # SQLite gives the -wal and -shm files the database file's permissions.
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(name), OWNER_ONLY)
    _write_reserve(_reserve_path(path))
    return lock_exclusively(path) if exclusive else None


def _reserve_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.reserve")


def _write_reserve(path: Path) -> bool:
    """Make sure the ballast file exists at full size; False if the disk has no room."""
    with contextlib.suppress(FileNotFoundError):
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
        with contextlib.suppress(OSError):
            os.remove(path)
        return False
    return True


def _remove_reserve(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        log.warning("Released the %d MiB disk reserve %s", RESERVE_BYTES >> 20, path)


def lock_exclusively(path: Path) -> int:
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


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
