"""Daily spend caps: a server's and the whole bot's, checked before a job is accepted.

A job is admitted only if the day's spend (the recorded cost of jobs finished since 00:00 UTC)
plus what the queued and running jobs are expected to cost plus this job's estimate stays
within each budget that applies: the server's (GUILD_DAILY_BUDGET_USD or its own setting) and
the bot's (DAILY_BUDGET_USD). A DM job counts only against the bot's. Counting the jobs still
in flight keeps a burst of commands from each seeing the same room and all getting in; the
check and the insert run under one lock, so two members submitting at once can't both slip
past: a lock of this process, and on a shared store the budget's lock in every process
(``Budgets.locks``, held by the scheduler through ``JobStore.admission``).

The estimate learns from history: the GPU seconds per second of audio of the model's recent
jobs, times REPLICATE_COST_PER_SECOND. Before a model has any history it assumes
DEFAULT_GPU_SECONDS_PER_AUDIO_SECOND.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from bot.clock import utc_now
from bot.jobs.limits import Refusal, format_duration, next_utc_midnight
from bot.jobs.store import Job, NewJob
from bot.music.request import MusicRequest

log = logging.getLogger(__name__)

DEFAULT_GPU_SECONDS_PER_AUDIO_SECOND = 1.0
ESTIMATE_WINDOW = 200  # the model's most recent jobs the estimate learns from
WARN_AT = 0.8  # the track card mentions a budget this full
_ROUNDING = 1e-9  # dollars: sums of floats must not refuse a job that exactly fits

Scope = Literal["server", "bot"]


class SpendHistory(Protocol):
    """What the budgets need from the job history (``JobStore`` provides it)."""

    async def gpu_seconds_per_audio_second(
        self, model_version: str, *, last: int
    ) -> float | None: ...

    async def committed_spend(self, since: datetime, *, guild_id: int | None = None) -> float: ...


@dataclass(frozen=True)
class BudgetUse:
    """How much of one daily budget is spent or on its way."""

    scope: Scope
    spent: float
    budget: float

    @property
    def fraction(self) -> float:
        return self.spent / self.budget


class Budgets:
    """Prices jobs and admits them within the daily budgets (0: no cap)."""

    def __init__(
        self,
        store: SpendHistory,
        *,
        cost_per_second: float,
        guild_budget: float = 0.0,
        bot_budget: float = 0.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if guild_budget < 0 or bot_budget < 0 or cost_per_second < 0:
            raise ValueError("budgets and the cost per second must not be negative")
        self._store = store
        self._cost_per_second = cost_per_second
        self._guild_budget = guild_budget
        self._bot_budget = bot_budget
        self._now = now
        self._lock = asyncio.Lock()

    def locks(self, guild_id: int | None, guild_budget: float | None = None) -> list[str]:
        """The names of the budgets a job here is checked against: while one process checks
        and adds a job under a budget, no other process does (see ``JobStore.admission``)."""
        names = []
        if guild_id is not None and self._server_budget(guild_budget):
            names.append(f"budget:guild:{guild_id}")
        if self._bot_budget:
            names.append("budget:bot")
        return names

    async def estimate(self, model_version: str, duration_seconds: float) -> float:
        """Dollars a track of this model and length is expected to cost."""
        rate = await self._store.gpu_seconds_per_audio_second(model_version, last=ESTIMATE_WINDOW)
        if rate is None:
            rate = DEFAULT_GPU_SECONDS_PER_AUDIO_SECOND
        return rate * duration_seconds * self._cost_per_second

    async def price(self, job: NewJob) -> NewJob:
        """The job with its model, duration and expected cost filled in."""
        try:
            request = MusicRequest.from_stored(job.request_json)
        except ValueError:
            log.warning("a job's request could not be read to price it; counted as free")
            return replace(job, expected_cost=0.0)
        model = request.model_version.value
        return replace(
            job,
            model_version=model,
            duration_seconds=float(request.duration),
            expected_cost=await self.estimate(model, request.duration),
        )

    async def admit(
        self,
        job: NewJob,
        add: Callable[[NewJob], Awaitable[Job]],
        *,
        guild_budget: float | None = None,
    ) -> Job | Refusal:
        """Check the budgets and `add` the priced job, one decision at a time.

        `guild_budget` is the server's (None: GUILD_DAILY_BUDGET_USD).
        """
        async with self._lock:
            refusal = await self._check(job, self._server_budget(guild_budget))
            if refusal is not None:
                log.info("job for user %d refused (%s budget)", job.user_id, refusal.reason)
                return refusal
            return await add(job)

    async def usage(
        self, guild_id: int | None, guild_budget: float | None = None
    ) -> list[BudgetUse]:
        """Today's use of each budget that applies to a server (or to a DM: the bot's)."""
        since = self._day_start()
        uses: list[BudgetUse] = []
        server_budget = self._server_budget(guild_budget)
        if guild_id is not None and server_budget:
            spent = await self._store.committed_spend(since, guild_id=guild_id)
            uses.append(BudgetUse("server", spent, server_budget))
        if self._bot_budget:
            spent = await self._store.committed_spend(since)
            uses.append(BudgetUse("bot", spent, self._bot_budget))
        return uses

    async def _check(self, job: NewJob, server_budget: float) -> Refusal | None:
        cost = job.expected_cost or 0.0
        for use in await self.usage(job.guild_id, server_budget):
            if use.spent + cost > use.budget + _ROUNDING:
                return self._refusal(use)
        return None

    def _refusal(self, use: BudgetUse) -> Refusal:
        now = self._current_time()
        reset_at = next_utc_midnight(now)
        whose = "This server's" if use.scope == "server" else "The bot's"
        state = (
            "is used up"
            if use.spent + _ROUNDING >= use.budget
            else "is nearly used up (a shorter track may still fit)"
        )
        return Refusal(
            "budget",
            reset_at,
            f"{whose} budget for today {state}; it resets at 00:00 UTC "
            f"(in {format_duration(reset_at - now)}).",
        )

    def _server_budget(self, guild_budget: float | None) -> float:
        return self._guild_budget if guild_budget is None else guild_budget

    def _day_start(self) -> datetime:
        return next_utc_midnight(self._current_time()) - timedelta(days=1)

    def _current_time(self) -> datetime:
        now = self._now()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)
