"""Moving a SQLite store's history to PostgreSQL (``jambot copy-store``).

An owner who outgrows one process copies every job and every server's settings into an empty
PostgreSQL database once, then points ``DATABASE_URL`` at it:

* the copy is one transaction on the target: all of it or nothing. A target that already holds
  jobs or server settings is refused (:class:`TargetNotEmptyError`): nothing is ever merged or
  overwritten;
* ids are kept (they are shown to users), and the target's id sequence is set past the highest
  id the SQLite file ever gave out, so new jobs continue the numbering and never reuse one;
* the columns copied are those both databases have (read from their catalogs, not listed
  here), so the copy keeps up with the migrations by itself;
* queued and running jobs are copied as they are, so the PostgreSQL-backed bot resumes them
  (a running job keeps its prediction id), but with no lease: any process takes them over at
  once;
* while it copies, it holds the lock ``jambot run`` holds on the SQLite file
  (:func:`bot_lock`), so no bot can start on the file and change it meanwhile, and a bot
  already running on it is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.jobs.database import Row, Transaction
from bot.jobs.sqlite import lock_exclusively, unlock
from bot.jobs.store import ACTIVE, JobStore

__all__ = ["CopyReport", "TargetNotEmptyError", "bot_lock", "copy_store"]

log = logging.getLogger(__name__)

# Each table with its primary key: the order rows are read and copied in.
TABLES = (("jobs", "id"), ("guild_settings", "guild_id"))
# Placeholders in one INSERT: PostgreSQL takes up to 32,767, the engine numbers up to 9,999.
MAX_PARAMETERS = 9_000
MAX_ROWS = 500
# What ties a queued or running job to the process that held it.
LEASE_COLUMNS = ("lease_owner", "lease_expires_at")


@dataclass(frozen=True)
class CopyReport:
    """What was copied: jobs (of them queued and running), server settings, and the id the
    target's next new job gets."""

    jobs: int
    queued: int
    running: int
    guild_settings: int
    next_id: int


class TargetNotEmptyError(Exception):
    """The target already holds jobs or server settings; nothing was copied."""

    def __init__(self, jobs: int, guild_settings: int) -> None:
        super().__init__(f"the target holds {jobs} jobs and {guild_settings} server settings")
        self.jobs = jobs
        self.guild_settings = guild_settings


@contextlib.contextmanager
def bot_lock(path: Path) -> Iterator[None]:
    """Hold the lock ``jambot run`` holds on the SQLite file at `path` (its ``.lock`` file),
    so no bot starts on it meanwhile. Raises DatabaseInUseError if a bot is running on it.

    Taken on its own, not by opening the store with ``exclusive``: the same process can't
    take it twice, and a lock taken before the store is opened keeps a running bot from
    seeing the file migrated under it."""
    fd = lock_exclusively(path)
    try:
        yield
    finally:
        unlock(fd)


async def copy_store(source: JobStore, target: JobStore) -> CopyReport:
    """Copy every job and server setting of the SQLite `source` into the empty PostgreSQL
    `target`, ids kept, in one transaction; continue the target's id numbering past them.

    Raises TargetNotEmptyError (copying nothing) if the target has any job or server setting,
    and StoreError if either database fails (the target is then left as it was).
    """
    if source.database.engine != "sqlite" or target.database.engine != "postgres":
        raise ValueError("copy_store copies a SQLite store into a PostgreSQL one")
    columns = {table: await _shared_columns(source, target, table) for table, _ in TABLES}
    highest = await _highest_id_given_out(source)
    counts = {"jobs": 0, "guild_settings": 0, "queued": 0, "running": 0}
    async with target.database.write(notify=True) as tx:
        # Held to the commit: a second copy (or a bot started too early) waits, then sees rows.
        await tx.execute("LOCK TABLE jobs, guild_settings IN SHARE ROW EXCLUSIVE MODE")
        rows = await tx.fetch(
            "SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM guild_settings)"
        )
        if rows[0][0] or rows[0][1]:
            raise TargetNotEmptyError(int(rows[0][0]), int(rows[0][1]))
        for table, key in TABLES:
            names = columns[table]
            async for page in _pages(source, table, key, names):
                values = [[row[i] for i in range(len(names))] for row in page]
                if table == "jobs":
                    _count_and_unlease(values, names, counts)
                await _insert(tx, table, names, values)
                counts[table] += len(values)
        if highest:
            await tx.fetch("SELECT setval(pg_get_serial_sequence('jobs', 'id'), ?)", (highest,))
    report = CopyReport(
        jobs=counts["jobs"],
        queued=counts["queued"],
        running=counts["running"],
        guild_settings=counts["guild_settings"],
        next_id=highest + 1,
    )
    log.debug("Copied %s from %s to %s", report, source.database.label, target.database.label)
    return report


async def _columns(store: JobStore, table: str) -> list[str]:
    """The table's columns in their order, from the database's own catalog."""
    if store.database.engine == "sqlite":
        rows = await store.database.read("SELECT name FROM pragma_table_info(?)", (table,))
    else:
        rows = await store.database.read(
            "SELECT column_name FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    return [str(row[0]) for row in rows]


async def _shared_columns(source: JobStore, target: JobStore, table: str) -> list[str]:
    """The columns of `table` both databases have, in the source's order."""
    theirs = set(await _columns(target, table))
    ours = await _columns(source, table)
    shared = [name for name in ours if name in theirs]
    if left_out := [name for name in ours if name not in theirs]:
        log.warning("%s.%s: no such columns in the target; not copied", table, left_out)
    if not shared:
        raise ValueError(f"the two databases have no {table} columns in common")
    return shared


async def _highest_id_given_out(source: JobStore) -> int:
    """The highest job id the SQLite file ever gave out (AUTOINCREMENT remembers ids whose
    rows are gone, and never gives them out again: neither may PostgreSQL)."""
    rows = await source.database.read(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM jobs), 0),"
        " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))"
    )
    return int(rows[0][0])


async def _pages(
    store: JobStore, table: str, key: str, names: Sequence[str]
) -> AsyncIterator[list[Row]]:
    """The table's rows (the `names` columns, in that order) in pages, by primary key."""
    size = max(1, min(MAX_ROWS, MAX_PARAMETERS // len(names)))
    selected = ", ".join(_quoted(name) for name in names)
    after: Any = None
    while True:
        where = "" if after is None else f" WHERE {_quoted(key)} > ?"
        rows = await store.database.read(
            f"SELECT {selected} FROM {table}{where} ORDER BY {_quoted(key)} LIMIT ?",
            (*(() if after is None else (after,)), size),
        )
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1][names.index(key)]


def _count_and_unlease(
    values: list[list[Any]], names: Sequence[str], counts: dict[str, int]
) -> None:
    """Count the queued and running jobs, and free them of the SQLite process's lease."""
    status = names.index("status")
    leases = [names.index(name) for name in LEASE_COLUMNS if name in names]
    for row in values:
        if row[status] in ACTIVE:
            counts[row[status]] += 1
            for index in leases:
                row[index] = None


async def _insert(
    tx: Transaction, table: str, names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """One INSERT of many rows."""
    if not rows:
        return
    one = f"({', '.join('?' * len(names))})"
    await tx.execute(
        f"INSERT INTO {table} ({', '.join(_quoted(name) for name in names)})"
        f" VALUES {', '.join([one] * len(rows))}",
        [value for row in rows for value in row],
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
