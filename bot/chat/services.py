"""What a serving bot holds open: the job store, the backend, the limits and the scheduler.

One object, built whole by `Services.open` or not at all: a start that fails halfway closes
what it had opened itself, so the bot never holds a half-built set to guard against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bot.jobs.limits import Limits
from bot.jobs.scheduler import JobEvents, Scheduler
from bot.jobs.store import JobStore
from bot.music.backend import MusicBackend
from bot.music.replicate import ReplicateBackend
from bot.settings import Settings


@dataclass(frozen=True)
class Services:
    """A serving bot's open resources, all or none; `close` ends them in dependency order."""

    store: JobStore
    backend: MusicBackend
    limits: Limits
    scheduler: Scheduler

    @classmethod
    async def open(cls, settings: Settings, events: JobEvents) -> Services:
        """Open the store, build the rest on it, and resume the jobs left unfinished."""
        store = await JobStore.open(settings.database_path, exclusive=True)
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(store.close)
            backend = ReplicateBackend.from_settings(settings)
            undo.push_async_callback(backend.aclose)
            limits = Limits(
                store,
                cooldown_seconds=settings.user_cooldown_seconds,
                daily_quota=settings.daily_quota_per_user,
                max_queued_per_user=settings.max_queued_per_user,
            )
            scheduler = Scheduler(
                store,
                backend,
                events,
                limits,
                max_concurrent=settings.max_concurrent_generations,
                cost_per_second=settings.replicate_cost_per_second,
                max_crashes=settings.max_job_crashes,
            )
            undo.push_async_callback(scheduler.close)
            await scheduler.start()
            undo.pop_all()
        return cls(store, backend, limits, scheduler)

    async def close(self) -> None:
        """Stop the scheduler first (running jobs stay recorded), then what it was using."""
        await self.scheduler.close()
        await self.backend.aclose()
        await self.store.close()
