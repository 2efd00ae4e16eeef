"""Whether the bot can do its work right now: the answer `GET /healthz` gives.

Healthy means both halves of a `/music` work: commands can arrive (the gateway's websocket
is connected) and become jobs that are recorded (the job store answers, and takes writes).
Anything else is a short reason in plain words, for the one who reads the probe's output.

The gateway is followed through discord.py's public events (`on_connect`, `on_resumed`,
`on_disconnect`) rather than its websocket object: discord.py reconnects on its own, and
between a drop and the resume nothing arrives, though `is_ready()` still says True.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from discord.ext import commands

from bot.chat.services import Services
from bot.jobs.store import StoreError

__all__ = ["HealthCheck"]

STORE_WITHIN = 1.0
"""Seconds the store has to answer. Much less than its own busy timeout (5 s): a probe must
answer before the prober's own timeout, and a store that makes jobs wait that long is sick."""


class HealthCheck:
    """Follows the gateway from the moment it's built; `problem()` says what's wrong, if any."""

    def __init__(
        self, bot: commands.Bot, database_path: str, services: Callable[[], Services | None]
    ) -> None:
        self._bot = bot
        self._database = Path(database_path)
        self._services = services
        self._connected = False
        bot.add_listener(self._up, "on_connect")
        bot.add_listener(self._up, "on_resumed")
        bot.add_listener(self._down, "on_disconnect")

    async def _up(self) -> None:
        self._connected = True

    async def _down(self) -> None:
        self._connected = False

    async def problem(self) -> str | None:
        """None when healthy, else why not (the first thing found wrong)."""
        if self._bot.is_closed():
            return "shutting down"
        if not self._connected:
            return "not connected to Discord's gateway"
        services = self._services()
        if services is None:
            return "starting: the job store isn't open yet"
        health = services.scheduler.health()
        if not health.ok:
            return health.reason
        return await self._store_problem(services)

    async def _store_problem(self, services: Services) -> str | None:
        try:
            async with asyncio.timeout(STORE_WITHIN):
                await services.store.get(0)  # the store's own connection answers a read
        except TimeoutError:
            return f"job store busy: no answer within {STORE_WITHIN:.0f}s"
        except StoreError as exc:
            return f"job store {exc.kind}: {exc.detail}"
        except RuntimeError:
            return "job store closed"
        return await asyncio.to_thread(_write_lock_problem, self._database, STORE_WITHIN)


def _write_lock_problem(database: Path, within: float) -> str | None:
    """Whether a writer gets the database's write lock within `within` seconds.

    In WAL mode a read never waits for a writer, so the store's read above can't see another
    connection (a `sqlite3` shell mid-transaction, a backup) holding the write lock, though
    every job's next write would wait on it. Taking the lock and letting it go at once writes
    nothing. Its own short-lived connection keeps the probe from queueing behind, or holding
    up, the store's, which waits much longer for a lock.
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
