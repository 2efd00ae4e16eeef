"""A server's own settings: parsing, the bot's limits, blocked words, storage and the stats."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.jobs.guild_settings import (
    MODELS,
    BotDefaults,
    Change,
    GuildSettings,
    RuleBook,
    SettingError,
    apply_change,
    parse_models,
    parse_words,
    resolve,
)
from bot.jobs.limits import Limits
from bot.jobs.stats import guild_stats
from bot.jobs.store import JobStore, NewJob
from tests.clock import START, Clock

DEFAULTS = BotDefaults(daily_budget_usd=0.0, daily_quota=20, cooldown_seconds=10, max_duration=30)
_interaction_ids = iter(range(1, 1_000_000))


def new_job(user_id: int = 42, guild_id: int | None = 7) -> NewJob:
    return NewJob(
        guild_id=guild_id,
        channel_id=8,
        user_id=user_id,
        interaction_id=next(_interaction_ids),
        application_id=9,
        token="token",
        token_expires_at=START + timedelta(minutes=15),
        request_json=json.dumps({"prompt": "a loop", "duration": 8}),
    )


# -- what a server may set --------------------------------------------------------------------


def test_no_settings_means_the_bots_defaults() -> None:
    rules = resolve(7, None, DEFAULTS)
    assert (rules.daily_budget_usd, rules.daily_quota) == (0.0, None)
    assert (rules.cooldown_seconds, rules.max_duration) == (10, 30)
    assert rules.allowed_models == MODELS and rules.blocked_words == ()


def test_a_server_tightens_the_bots_limits() -> None:
    change = Change(
        daily_budget_usd=2.5,
        daily_quota=5,
        cooldown_seconds=60,
        max_duration=10,
        allowed_models=("large",),
    )
    rules = resolve(7, apply_change(GuildSettings(), change, DEFAULTS), DEFAULTS)
    assert (rules.daily_budget_usd, rules.daily_quota) == (2.5, 5)
    assert (rules.cooldown_seconds, rules.max_duration) == (60, 10)
    assert rules.allowed_models == ("large",)
    assert rules.allows("large") and not rules.allows("stereo-large")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (Change(daily_quota=21), "daily_quota can be at most 20 here"),
        (Change(daily_quota=0), "daily_quota can be at most 20 here"),
        (Change(cooldown_seconds=5), "cooldown must be at least 10 seconds here"),
        (Change(max_duration=31), "max_duration can be at most 30 seconds here"),
    ],
)
def test_a_server_cannot_loosen_the_bots_limits(change: Change, words: str) -> None:
    with pytest.raises(SettingError, match=words):
        apply_change(GuildSettings(), change, DEFAULTS)


def test_a_budget_stays_within_the_bots_budget_per_server() -> None:
    capped = BotDefaults(daily_budget_usd=1.0, daily_quota=0, cooldown_seconds=0, max_duration=30)
    for budget in (1.5, 0.0):
        with pytest.raises(SettingError, match=r"at most \$1.00 here"):
            apply_change(GuildSettings(), Change(daily_budget_usd=budget), capped)
    assert resolve(7, GuildSettings(daily_budget_usd=0.4), capped).daily_budget_usd == 0.4
    # an operator who lowers the environment's value lowers a server's stored one too
    assert resolve(7, GuildSettings(daily_budget_usd=5.0), capped).daily_budget_usd == 1.0
    assert resolve(7, GuildSettings(max_duration=60), DEFAULTS).max_duration == 30


def test_reset_puts_settings_back() -> None:
    current = GuildSettings(daily_quota=5, max_duration=8, blocked_words=("rain",))
    one = apply_change(current, Change(reset=("max_duration",)), DEFAULTS)
    assert one == GuildSettings(daily_quota=5, blocked_words=("rain",))
    assert apply_change(current, Change(reset=("all",)), DEFAULTS) == GuildSettings()


def test_models_and_words_are_parsed() -> None:
    assert parse_models(" Large, stereo-large ") == ("stereo-large", "large")
    for bad in ("", "large, huge", " , "):
        with pytest.raises(SettingError, match="comma-separated list of some of"):
            parse_models(bad)
    assert parse_words("Rain, heavy   METAL,,rain") == ("rain", "heavy metal")
    with pytest.raises(SettingError, match="at most 50 characters"):
        parse_words("x" * 51)


def test_block_and_unblock_words() -> None:
    settings = apply_change(GuildSettings(), Change(block=("rain", "snow")), DEFAULTS)
    settings = apply_change(settings, Change(block=("snow", "hail"), unblock=("rain",)), DEFAULTS)
    assert settings.blocked_words == ("snow", "hail")


def test_blocked_words_match_whole_words_in_any_case() -> None:
    rules = resolve(7, GuildSettings(blocked_words=("rain", "heavy metal")), DEFAULTS)
    assert rules.blocks("Warm RAIN on a roof")
    assert rules.blocks("rain.")
    assert rules.blocks("some heavy\tmetal riffs")
    assert rules.blocks("r\u200bain on glass")  # a zero-width space can't hide it
    assert not rules.blocks("a rainbow of sound")
    assert not rules.blocks("brain waves")
    assert not resolve(7, None, DEFAULTS).blocks("rain")


# -- storage and the per-server quota -----------------------------------------------------------


async def test_settings_are_stored_per_server(store: JobStore) -> None:
    book = RuleBook(store, DEFAULTS)
    assert await store.guild_settings(7) is None
    change = Change(daily_budget_usd=1.25, allowed_models=("large", "melody-large"))
    saved = await book.change(7, change, by=42)
    saved = await book.change(7, Change(block=("rain",)), by=43)
    assert await store.guild_settings(7) == saved
    assert saved == GuildSettings(
        daily_budget_usd=1.25, allowed_models=("large", "melody-large"), blocked_words=("rain",)
    )
    assert (await book.rules_for(8)).daily_budget_usd == 0.0  # another server: the defaults
    assert (await book.rules_for(None)).allowed_models == MODELS  # a DM: the defaults
    with pytest.raises(SettingError):
        await book.change(7, Change(max_duration=99), by=42)
    assert await store.guild_settings(7) == saved  # a refused change stores nothing


async def test_a_servers_quota_counts_tracks_in_that_server(store: JobStore, clock: Clock) -> None:
    limits = Limits(store, cooldown_seconds=0, daily_quota=0, max_queued_per_user=0, now=clock)
    defaults = replace(DEFAULTS, cooldown_seconds=0)
    rules = resolve(7, GuildSettings(daily_quota=2), defaults)
    await store.add(new_job(guild_id=99))  # elsewhere: not this server's
    await store.add(new_job())
    assert await limits.check(42, rules) is None
    await store.add(new_job())
    refusal = await limits.check(42, rules)
    assert refusal is not None and refusal.reason == "quota"
    assert refusal.message.startswith("You've used all 2 of today's tracks in this server;")
    assert await limits.check(42, resolve(99, None, defaults)) is None
    assert await limits.remaining_today(42, rules) == (2, 2, refusal.retry_at)


async def test_a_servers_cooldown_is_longer(store: JobStore, clock: Clock) -> None:
    limits = Limits(store, cooldown_seconds=10, daily_quota=0, max_queued_per_user=0, now=clock)
    rules = resolve(7, GuildSettings(cooldown_seconds=60), DEFAULTS)
    await store.add(new_job())
    clock.advance(seconds=30)
    assert await limits.check(42) is None
    refusal = await limits.check(42, rules)
    assert refusal is not None and refusal.message == "You can request another track in 30 seconds."


# -- stats ---------------------------------------------------------------------------------------


async def test_stats_count_today_and_the_last_30_days(store: JobStore, clock: Clock) -> None:
    async def deliver(user_id: int, after: float, cost: float) -> None:
        job = await store.add(new_job(user_id))
        await store.start(job.id)
        clock.advance(seconds=after)
        await store.record_result(job.id, seed=1, predict_time=1, cost_estimate=cost)
        await store.deliver(job.id, message_id=1, channel_id=8)

    await deliver(1, 10, 0.1)  # 20:48 on 14 March, ten days before "now"
    clock.advance(days=10)
    await deliver(2, 20, 0.2)
    await deliver(2, 40, 0.3)
    failed = await store.add(new_job(3))
    await store.fail(failed.id, error="Failed.", detail="x")
    await store.add(new_job(4, guild_id=99))

    stats = await guild_stats(store, 7, clock.now)
    assert (stats.today.tracks, stats.today.failures) == (2, 1)
    assert stats.today.spend == pytest.approx(0.5)
    assert (stats.month.tracks, stats.month.spend) == (3, pytest.approx(0.6))
    assert stats.median_delivery_seconds == pytest.approx(20)
    assert stats.top_members == [(2, 2), (1, 1)]

    clock.advance(days=25)
    later = await guild_stats(store, 7, clock.now)
    assert (later.today.tracks, later.month.tracks) == (0, 2)
