"""The PostgreSQL engine: one database shared by several bot processes.

Built on asyncpg (async, fast, with ``LISTEN``/``NOTIFY`` and a connection pool of its own)
and on PostgreSQL's own means of coordination, not on a coordinator of ours:

* a write is one transaction; the named locks of :meth:`PostgresDatabase.write` are
  transaction-level advisory locks (``pg_advisory_xact_lock``), so a decision that must be
  taken one at a time across processes (the next job under the global cap, a user's limits)
  is, and the lock ends with the transaction, or with the connection if a process dies;
* a :meth:`session` pins one pooled connection to the calling task and holds its locks
  across several reads and writes, which then commit together;
* several processes taking over a dead one's jobs at once each take the rows no other is
  taking (``FOR UPDATE SKIP LOCKED``);
* every write that changes what may run next sends ``NOTIFY jambot_jobs``; each process
  ``LISTEN``s on its own connection and wakes its dispatcher (delivered on commit only).

The store's SQL uses ``?`` placeholders; they become ``$1, $2, ...`` here. Failures become
``StoreError`` kinds: a server that can't be reached is ``unreachable`` (worth retrying, it may
come back), lock waits, deadlocks and serialisation failures are ``busy``, a full disk is
``full``, anything else ``broken``. The URL's password never appears in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from bot.jobs.database import Engine, Row, lock_key
from bot.jobs.migrate import migrate_postgres
from bot.jobs.store_errors import (
    StoreBusyError,
    StoreError,
    StoreFullError,
    StoreUnreachableError,
)

log = logging.getLogger(__name__)

CHANNEL = "jambot_jobs"
POOL_SIZE = 10
CONNECT_TIMEOUT = 10.0
# No statement may hang a job for ever on a server that stopped answering.
COMMAND_TIMEOUT = 30.0
# How long the listener waits before connecting again after losing its connection.
RELISTEN_DELAY = 1.0

_BUSY = (
    asyncpg.exceptions.TransactionRollbackError,  # deadlocks, serialisation failures
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,  # lock_timeout, statement_timeout
    asyncpg.exceptions.TooManyConnectionsError,
)
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # the server is shutting down or starting
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def redact(url: str) -> str:
    """The URL without its password."""
    from bot.settings import redact_database_url

    return redact_database_url(url)


def translate(exc: BaseException, label: str) -> StoreError | None:
    """The StoreError kind for a driver or network failure; None for anything else."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.exceptions.DiskFullError):
        return StoreFullError(f"database full: {exc}")
    if isinstance(exc, _BUSY):
        return StoreBusyError(f"database busy: {type(exc).__name__}: {exc}")
    if isinstance(exc, _UNREACHABLE):
        reason = str(exc) or type(exc).__name__
        return StoreUnreachableError(f"the PostgreSQL server at {label} can't be reached: {reason}")
    if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
        return StoreError(f"the PostgreSQL server at {label} refused the login: {exc}")
    if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
        return StoreError(f"the PostgreSQL server at {label} has no such database: {exc}")
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return StoreError(f"database error: {type(exc).__name__}: {exc}")
    return None


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (the store's SQL has no ``?`` in
    a string literal)."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    """Rows changed, from a command status such as ``UPDATE 1`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _Transaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return _rowcount(await self._conn.execute(numbered(sql), *parameters))

    async def fetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.fetch(numbered(sql), *parameters))


# The connection a task has pinned with `session`, with the database it belongs to.
_pinned: contextvars.ContextVar[tuple[PostgresDatabase, asyncpg.Connection] | None] = (
    contextvars.ContextVar("jambot_pinned_connection", default=None)
)


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database, shared with other processes."""

    engine: Engine = "postgres"
    shared = True
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool: asyncpg.Pool | None = pool
        self._url = url
        self.label = redact(url)
        self._listeners: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @classmethod
    async def open(
        cls, url: str, *, now: Callable[[], datetime], pool_size: int = POOL_SIZE
    ) -> PostgresDatabase:
        """Connect, and bring the schema up to date (one process at a time)."""
        label = redact(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except Exception as exc:
            raise _translated(exc, label) from exc
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn, now=now)
        except BaseException as exc:
            await pool.close()
            error = translate(exc, label)
            if error is None:
                raise
            raise error from exc
        log.debug("Opened job database %s", label)
        return cls(pool, url)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except TimeoutError:
                pool.terminate()

    @property
    def full(self) -> bool:
        return False  # PostgreSQL keeps its own disk: a full one fails each write, typed

    async def check_room(self) -> None:
        """Nothing to check ahead: a full disk fails the insert itself (StoreFullError)."""

    @contextlib.asynccontextmanager
    async def write(
        self, *, locks: Sequence[str] = (), notify: bool = False
    ) -> AsyncIterator[_Transaction]:
        async with self._guarded(), self._connection() as conn, conn.transaction():
            for name in locks:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))
            yield _Transaction(conn)
            if notify:
                await conn.execute(f"NOTIFY {CHANNEL}")

    @contextlib.asynccontextmanager
    async def session(self, *locks: str) -> AsyncIterator[None]:
        if self._pinned_connection() is not None:
            raise RuntimeError("a session is already open in this task")
        async with self._guarded(), self._connection() as conn, conn.transaction():
            for name in locks:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))
            token = _pinned.set((self, conn))
            try:
                yield
            finally:
                _pinned.reset(token)

    async def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        async with self._guarded(), self._connection() as conn:
            return list(await conn.fetch(numbered(sql), *parameters))

    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def start_listening(self) -> None:
        """LISTEN on a connection of its own (kept open, and opened again if it drops)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="jambot-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), CONNECT_TIMEOUT)

    async def write_lock_problem(self, within: float) -> str | None:
        """Whether a writer gets a row lock on the jobs table within `within` seconds (an
        operator's ``LOCK TABLE`` or a stuck migration would hold every job's writes)."""
        try:
            async with asyncio.timeout(within + 1.0), self.write() as tx:
                await tx.execute(f"SET LOCAL lock_timeout = {int(within * 1000)}")
                await tx.execute("LOCK TABLE jobs IN ROW EXCLUSIVE MODE")
                raise _Probed
        except _Probed:
            return None
        except TimeoutError:
            return f"job store busy: no answer within {within:.0f}s"
        except StoreError as exc:
            return f"job store {exc.kind}: {exc.detail}"

    # -- internals --------------------------------------------------------------------------

    def _pinned_connection(self) -> asyncpg.Connection | None:
        pinned = _pinned.get()
        return pinned[1] if pinned is not None and pinned[0] is self else None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pinned = self._pinned_connection()
        if pinned is not None:
            yield pinned
            return
        if self._pool is None:
            raise RuntimeError("the job store is closed")
        async with self._pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _guarded(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            error = translate(exc, self.label)
            if error is None or error is exc:
                raise
            raise error from exc

    async def _listen(self) -> None:
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT)
            except Exception as exc:
                log.warning("could not LISTEN on %s (%s); trying again", self.label, exc)
                await asyncio.sleep(RELISTEN_DELAY)
                continue
            try:
                conn.add_termination_listener(functools.partial(_set, lost))
                await conn.add_listener(CHANNEL, self._notified)
                self._listening.set()
                self._notified()  # whatever happened while not listening
                await lost.wait()
                log.warning("lost the LISTEN connection to %s; connecting again", self.label)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN on %s failed (%s); trying again", self.label, exc)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
            await asyncio.sleep(RELISTEN_DELAY)

    def _notified(self, *_: object) -> None:
        for callback in self._listeners:
            callback()


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()


class _Probed(Exception):
    """Ends the health probe's transaction by rolling it back."""


def _translated(exc: Exception, label: str) -> StoreError:
    return translate(exc, label) or StoreError(f"database error: {type(exc).__name__}: {exc}")
