"""A server's activity for /jamadmin stats: today (since 00:00 UTC) and over the last 30 days.

Everything counts by when a job finished, like the daily budget's spend, so the day's figures
here and the budget agree.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bot.jobs.limits import next_utc_midnight
from bot.jobs.store import Activity

WINDOW = timedelta(days=30)
TOP_MEMBERS = 5


class ActivityHistory(Protocol):
    """What the stats read (``JobStore`` provides it)."""

    async def guild_activity(self, guild_id: int, since: datetime) -> Activity: ...

    async def delivery_seconds(self, guild_id: int, since: datetime) -> list[float]: ...

    async def top_members(
        self, guild_id: int, since: datetime, limit: int
    ) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class GuildStats:
    today: Activity
    month: Activity
    median_delivery_seconds: float | None  # command → delivered track, over the 30 days
    top_members: list[tuple[int, int]]  # (user id, tracks) over the 30 days, most first


async def guild_stats(store: ActivityHistory, guild_id: int, now: datetime) -> GuildStats:
    """The server's figures as of `now` (timezone-aware)."""
    day_start = next_utc_midnight(now) - timedelta(days=1)
    month_start = now - WINDOW
    waits = await store.delivery_seconds(guild_id, month_start)
    return GuildStats(
        today=await store.guild_activity(guild_id, day_start),
        month=await store.guild_activity(guild_id, month_start),
        median_delivery_seconds=statistics.median(waits) if waits else None,
        top_members=await store.top_members(guild_id, month_start, TOP_MEMBERS),
    )
