"""Per-user limits checked before a /music command is accepted: cooldown, daily quota, queue cap.

Pure logic over the job history; the numbers come from the settings but are passed in plainly.
A refusal carries a sentence for the user that says when they can try again.

Checks run from the longest wait to the shortest, so the user hears the limit that actually
decides when they can submit: the daily quota (resets at 00:00 UTC), then the queue cap (until
one of their tracks is done), then the cooldown (seconds after their last submission).

A server's own rules (``/jamadmin config``) add its per-member quota, counted over the member's
tracks in that server, and may lengthen the cooldown; they never loosen the bot's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from bot.clock import utc_now

if TYPE_CHECKING:
    from bot.jobs.guild_settings import Rules

log = logging.getLogger(__name__)

RefusalReason = Literal[
    "cooldown", "quota", "queue", "storage", "duplicate", "budget", "blocked", "model"
]


class SubmissionHistory(Protocol):
    """What the limits need to know about a user's jobs (``JobStore`` provides it)."""

    async def count_submitted_since(
        self, user_id: int, since: datetime, *, guild_id: int | None = None
    ) -> int: ...

    async def last_submitted_at(self, user_id: int) -> datetime | None: ...

    async def active_count_for_user(self, user_id: int) -> int: ...


@dataclass(frozen=True)
class Refusal:
    """A refused command: which limit, when to retry (None: unknown), a sentence for the user."""

    reason: RefusalReason
    retry_at: datetime | None
    message: str


def format_duration(duration: timedelta) -> str:
    """A wait for people, rounded up so that trying again then always works.

    ``7 seconds``, ``1 second``, ``3 min``, ``3 h 12 min``, ``2 h``.
    """
    microseconds = max(duration // timedelta(microseconds=1), 0)
    seconds = -(-microseconds // 1_000_000)
    if seconds < 60:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    minutes = -(-seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def next_utc_midnight(moment: datetime) -> datetime:
    """The first 00:00 UTC strictly after `moment` (when the daily quota resets)."""
    day_start = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day_start + timedelta(days=1)


class Limits:
    """The per-user limits. A zero disables a limit: no cooldown, no quota, no queue cap."""

    def __init__(
        self,
        store: SubmissionHistory,
        *,
        cooldown_seconds: float,
        daily_quota: int,
        max_queued_per_user: int,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if cooldown_seconds < 0 or daily_quota < 0 or max_queued_per_user < 0:
            raise ValueError("limits must not be negative (0 disables a limit)")
        self._store = store
        self._cooldown = timedelta(seconds=cooldown_seconds)
        self._quota = daily_quota
        self._max_queued = max_queued_per_user
        self._now = now

    async def check(self, user_id: int, rules: Rules | None = None) -> Refusal | None:
        """None if the user may submit a job now, else the first limit that stops them.

        `rules` are the server's, where the command was sent (None: only the bot's limits).
        """
        now = self._current_time()
        cooldown = max(self._cooldown, timedelta(seconds=rules.cooldown_seconds if rules else 0))
        refusal = (
            await self._check_quota(user_id, now, self._quota)
            or await self._check_server_quota(user_id, now, rules)
            or await self._check_queue(user_id)
            or await self._check_cooldown(user_id, now, cooldown)
        )
        if refusal is not None:
            log.info("User %d refused (%s)", user_id, refusal.reason)
        return refusal

    async def remaining_today(
        self, user_id: int, rules: Rules | None = None
    ) -> tuple[int, int, datetime]:
        """(tracks counted today, the daily quota (0: unlimited), when the quota resets):
        the bot's quota, or the server's where that one leaves fewer tracks."""
        now = self._current_time()
        reset_at = next_utc_midnight(now)
        since = reset_at - timedelta(days=1)
        used = await self._store.count_submitted_since(user_id, since)
        if rules is None or not rules.daily_quota or rules.guild_id is None:
            return used, self._quota, reset_at
        here = await self._store.count_submitted_since(user_id, since, guild_id=rules.guild_id)
        if self._quota and self._quota - used < rules.daily_quota - here:
            return used, self._quota, reset_at
        return here, rules.daily_quota, reset_at

    async def _check_server_quota(
        self, user_id: int, now: datetime, rules: Rules | None
    ) -> Refusal | None:
        if rules is None or not rules.daily_quota or rules.guild_id is None:
            return None
        return await self._check_quota(user_id, now, rules.daily_quota, rules.guild_id)

    async def _check_quota(
        self, user_id: int, now: datetime, quota: int, guild_id: int | None = None
    ) -> Refusal | None:
        if quota == 0:
            return None
        reset_at = next_utc_midnight(now)
        since = reset_at - timedelta(days=1)
        used = await self._store.count_submitted_since(user_id, since, guild_id=guild_id)
        if used < quota:
            return None
        where = "" if guild_id is None else " in this server"
        used_up = (
            f"You've used all {quota} of today's tracks{where}"
            if quota > 1
            else f"You've used today's track{where}"
        )
        return Refusal(
            "quota",
            reset_at,
            f"{used_up}; the quota resets at 00:00 UTC (in {format_duration(reset_at - now)}).",
        )

    async def _check_queue(self, user_id: int) -> Refusal | None:
        if self._max_queued == 0:
            return None
        active = await self._store.active_count_for_user(user_id)
        if active < self._max_queued:
            return None
        waiting = "1 track waiting" if active == 1 else f"{active} tracks waiting"
        done = "it is" if active == 1 else "one is"
        return Refusal("queue", None, f"You already have {waiting}; try again when {done} done.")

    async def _check_cooldown(
        self, user_id: int, now: datetime, cooldown: timedelta
    ) -> Refusal | None:
        if not cooldown:
            return None
        last = await self._store.last_submitted_at(user_id)
        if last is None:
            return None
        retry_at = last + cooldown
        if retry_at <= now:
            return None
        return Refusal(
            "cooldown",
            retry_at,
            f"You can request another track in {format_duration(retry_at - now)}.",
        )

    def _current_time(self) -> datetime:
        now = self._now()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)
