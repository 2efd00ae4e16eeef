"""The two engines a job store runs on, behind one small interface.

``JobStore`` speaks plain SQL with ``?`` placeholders to a :class:`Database`; each engine
turns that into its own driver's calls and its own failures into ``StoreError`` kinds:

* :class:`bot.jobs.sqlite.SqliteDatabase` (``sqlite:///path``): one file, one process, one
  connection; a write transaction takes the file's write lock at its first statement
  (``BEGIN IMMEDIATE``), so writers are serialised and the locks below are already held.
* :class:`bot.jobs.postgres.PostgresDatabase` (``postgresql://...``): a pool shared by
  several processes; the named locks are PostgreSQL advisory locks held to the end of the
  transaction, and changes are announced with ``NOTIFY`` to every process's ``LISTEN``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Engine = Literal["sqlite", "postgres"]


class Row(Protocol):
    """A result row, read by column name or position (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Transaction(Protocol):
    """Statements inside one transaction."""

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def fetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Run a query (or a statement with RETURNING); its rows."""
        ...


class Database(Protocol):
    """What the job store needs from an engine."""

    engine: Engine
    label: str
    """How to name the database in a log line or a message (never a password)."""
    shared: bool
    """Whether other processes may use this database at the same time."""
    skip_locked: str
    """What a subquery ends with to lock the rows it picks and skip rows that another
    transaction has locked (`` FOR UPDATE SKIP LOCKED``; empty where writers are serialised)."""

    @property
    def full(self) -> bool:
        """Whether new jobs are refused because the disk filled up."""
        ...

    async def check_room(self) -> None:
        """Raise StoreFullError while the disk is full (and notice when it has room again)."""
        ...

    def write(
        self, *, locks: Sequence[str] = (), notify: bool = False
    ) -> AbstractAsyncContextManager[Transaction]:
        """One write transaction, committed on success and rolled back on any exception.

        `locks` are names of locks held (in that order) from the start of the transaction to
        its end, by every process sharing the database; `notify` tells every process (this one
        included) that jobs changed, once the transaction commits.
        """
        ...

    def session(self, *locks: str) -> AbstractAsyncContextManager[None]:
        """Hold `locks` across several reads and writes made by the current task (and commit
        its writes together at the end). A no-op where one process owns the database."""
        ...

    async def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever a write with `notify` commits,
        in any process."""
        ...

    async def start_listening(self) -> None:
        """Begin delivering other processes' notifications (where there can be any)."""
        ...

    async def write_lock_problem(self, within: float) -> str | None:
        """None if a writer gets the database's locks within `within` seconds, else why not."""
        ...

    async def close(self) -> None: ...


def lock_key(name: str) -> int:
    """A named lock as a signed 64-bit key (what PostgreSQL's advisory locks take)."""
    digest = hashlib.blake2b(f"jambot:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
