"""What a serving bot holds open: the job store, the backend, the limits, the servers' rules,
the budgets and the scheduler.

One object, built whole by `Services.open` or not at all: a start that fails halfway closes
what it had opened itself, so the bot never holds a half-built set to guard against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bot.jobs.budget import Budgets, BudgetUse
from bot.jobs.guild_settings import BotDefaults, RuleBook
from bot.jobs.limits import Limits
from bot.jobs.scheduler import JobEvents, Scheduler
from bot.jobs.store import JobStore
from bot.music.backend import MusicBackend
from bot.music.replicate import ReplicateBackend
from bot.ops.metrics import NO_METRICS, JobMetrics
from bot.settings import Settings


@dataclass(frozen=True)
class Services:
    """A serving bot's open resources, all or none; `close` ends them in dependency order."""

    store: JobStore
    backend: MusicBackend
    limits: Limits
    scheduler: Scheduler
    rules: RuleBook
    budgets: Budgets

    @classmethod
    async def open(
        cls, settings: Settings, events: JobEvents, metrics: JobMetrics = NO_METRICS
    ) -> Services:
        """Open the store, build the rest on it, and resume the jobs left unfinished.

        The backend and the scheduler report to `metrics` (from the first resumed job on).
        """
        store = await JobStore.open(settings.database_url, exclusive=True)
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(store.close)
            backend = ReplicateBackend.from_settings(settings, metrics)
            undo.push_async_callback(backend.aclose)
            limits = Limits(
                store,
                cooldown_seconds=settings.user_cooldown_seconds,
                daily_quota=settings.daily_quota_per_user,
                max_queued_per_user=settings.max_queued_per_user,
            )
            rules = RuleBook(store, _defaults(settings))
            budgets = Budgets(
                store,
                cost_per_second=settings.replicate_cost_per_second,
                guild_budget=settings.guild_daily_budget_usd,
                bot_budget=settings.daily_budget_usd,
            )
            scheduler = Scheduler(
                store,
                backend,
                events,
                limits,
                max_concurrent=settings.max_concurrent_generations,
                cost_per_second=settings.replicate_cost_per_second,
                max_crashes=settings.max_job_crashes,
                budgets=budgets,
                metrics=metrics,
                lease_seconds=settings.job_lease_seconds,
                starts_per_minute=settings.replicate_creates_per_minute,
                on_poll_share=backend.set_poll_share,
            )
            undo.push_async_callback(scheduler.close)
            await scheduler.start()
            undo.pop_all()
        return cls(store, backend, limits, scheduler, rules, budgets)

    async def budget_use(self, guild_id: int | None) -> list[BudgetUse]:
        """Today's use of the budgets that apply where a track was made."""
        rules = await self.rules.rules_for(guild_id)
        return await self.budgets.usage(guild_id, rules.daily_budget_usd)

    async def close(self) -> None:
        """Stop the scheduler first (running jobs stay recorded), then what it was using."""
        await self.scheduler.close()
        await self.backend.aclose()
        await self.store.close()


def _defaults(settings: Settings) -> BotDefaults:
    """What every server starts from, and the limits its own settings stay within."""
    return BotDefaults(
        daily_budget_usd=settings.guild_daily_budget_usd,
        daily_quota=settings.daily_quota_per_user,
        cooldown_seconds=settings.user_cooldown_seconds,
        max_duration=settings.max_duration_seconds,
    )
