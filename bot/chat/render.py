"""Pure builders for what users read: escaped, within Discord's limits, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import discord

from bot.jobs.budget import BudgetUse
from bot.jobs.guild_settings import BotDefaults, GuildSettings, Rules
from bot.jobs.stats import GuildStats
from bot.jobs.store import Activity, Job
from bot.music.backend import Progress, Track
from bot.music.request import MusicRequest

CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
ACCENT = discord.Colour(0x8E5CF7)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """User text made inert: no markdown, no mentions (the client also pings nobody)."""
    text = discord.utils.escape_markdown(text)
    return discord.utils.escape_mentions(text)


def ordinal(number: int) -> str:
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def queued_text(position: int) -> str:
    if position <= 1:
        return "⏳ Next in line — your track starts as soon as a slot frees up."
    return f"⏳ Waiting in line: **{ordinal(position)}** in line."


def progress_text(progress: Progress) -> str:
    elapsed = f"{progress.elapsed:.0f}s"
    if progress.status == "starting":
        return f"🎛️ Warming up the model… {elapsed} (a cold GPU can take a minute or two)"
    if progress.status == "downloading":
        return "📥 Finishing up: fetching your track…"
    parts = ["🎶 Generating"]
    if progress.percent is not None:
        parts.append(f"{progress.percent:.0f}%")
    parts.append(f"{elapsed} elapsed")
    if progress.eta is not None:
        parts.append(f"about {progress.eta:.0f}s left")
    return " · ".join(parts)


def failure_text(user_message: str) -> str:
    return clip(f"⚠️ {user_message}", CONTENT_LIMIT)


def track_embed(
    request: MusicRequest,
    track: Track,
    note: str | None = None,
    *,
    seconds: float | None = None,
    lineage: str | None = None,
    cost: float | None = None,
    budgets: Sequence[str] = (),
) -> discord.Embed:
    """The card under a track. `seconds` is the file's length when it isn't the requested
    duration (an extended track); `lineage` says which track a button made it from; `cost` is
    the track's estimated cost in dollars; `budgets` are lines about nearly spent budgets."""
    description = "\n".join(line for line in (lineage, *budgets) if line) or None
    embed = discord.Embed(
        title=clip(escape(request.prompt), TITLE_LIMIT),
        description=description,
        colour=ACCENT,
    )
    length = request.duration if seconds is None else seconds
    embed.add_field(name="Duration", value=f"{length:.0f}s")
    embed.add_field(name="Model", value=request.model_version.value)
    embed.add_field(name="Seed", value=str(track.seed) if track.seed is not None else "random")
    embed.add_field(name="Format", value=note or track.format.upper())
    generation = f"{track.elapsed:.1f}s"
    if track.predict_time is not None:
        generation += f" ({track.predict_time:.1f}s on GPU)"
    embed.add_field(name="Made in", value=generation)
    if cost is not None:
        embed.add_field(name="Cost", value=f"~${cost:.4f}")
    embed.set_footer(text="MusicGen on Replicate · reuse the seed to get this track again")
    return embed


def budget_note(use: BudgetUse) -> str:
    """``This server has used 84% of today's $1.00 budget.`` (rounded down: 80% means 80%)."""
    who = "This server has" if use.scope == "server" else "The bot has"
    percent = math.floor(use.fraction * 100 + 1e-9)
    return f"{who} used {percent}% of today's ${use.budget:.2f} budget."


def too_large_text(track: Track) -> str:
    expiry = ""
    if track.url_expires_at is not None:
        expiry = f" (the link expires {discord.utils.format_dt(track.url_expires_at, 'R')})"
    return (
        "🎵 Your track is ready, but it's too large to upload here even compressed. "
        f"Download it from Replicate{expiry}: {track.output_url}"
    )


def history_line(job: Job, link: str | None) -> str:
    prompt = clip(escape(_prompt_of(job)), 60)
    when = discord.utils.format_dt(job.created_at, "R")
    status = {"delivered": "✅", "failed": "⚠️", "cancelled": "✖️"}.get(job.status, "⏳")
    where = f" — [open]({link})" if link else ""
    return f"{status} `#{job.id}` {prompt} · {when}{where}"


def _prompt_of(job: Job) -> str:
    try:
        return MusicRequest.from_stored(job.request_json).prompt
    except ValueError:
        return "?"


def reset_text(reset_at: datetime) -> str:
    return discord.utils.format_dt(reset_at, "R")


def settings_text(settings: GuildSettings, rules: Rules, defaults: BotDefaults) -> str:
    """This server's settings as /jamadmin config shows them: what applies, and whether the
    server set it or it is the bot's default. Blocked words are spoilered (shown on a click)."""

    def source(value: object) -> str:
        return "set here" if value not in (None, ()) else "bot default"

    budget = _dollars_or(rules.daily_budget_usd, "no cap")
    quota = rules.daily_quota or defaults.daily_quota
    models = ", ".join(rules.allowed_models)
    words = ", ".join(f"||{escape(word)}||" for word in rules.blocked_words) or "none"
    lines = [
        "**jambot in this server**",
        f"Daily budget: {budget} ({source(settings.daily_budget_usd)})",
        f"Tracks per member per day: {quota or 'no limit'} ({source(settings.daily_quota)})",
        f"Cooldown: {rules.cooldown_seconds:g} s ({source(settings.cooldown_seconds)})",
        f"Longest track: {rules.max_duration} s ({source(settings.max_duration)})",
        f"Models: {models} ({source(settings.allowed_models)})",
        f"Blocked words: {words} ({source(settings.blocked_words)})",
        "Change them with the options of `/jamadmin config`; `reset` puts one back.",
    ]
    return clip("\n".join(lines), CONTENT_LIMIT)


def stats_text(stats: GuildStats, budgets: Sequence[BudgetUse]) -> str:
    """/jamadmin stats. Members are mentions, which ping nobody (the client allows none)."""
    lines = [
        "**jambot in this server**",
        f"Today: {_activity(stats.today)}",
        f"Last 30 days: {_activity(stats.month)}",
    ]
    median = stats.median_delivery_seconds
    if median is not None:
        lines.append(f"Median time from command to track: {median:.1f}s")
    for use in budgets:
        if use.scope == "server":
            lines.append(
                f"Today's budget: ${use.spent:.2f} of ${use.budget:.2f} "
                f"({math.floor(use.fraction * 100 + 1e-9)}%)"
            )
    if stats.top_members:
        ranked = ", ".join(f"<@{user}> {count}" for user, count in stats.top_members)
        lines.append(f"Most active (30 days): {ranked}")
    return clip("\n".join(lines), CONTENT_LIMIT)


def _activity(activity: Activity) -> str:
    tracks = "1 track" if activity.tracks == 1 else f"{activity.tracks} tracks"
    failures = "1 failure" if activity.failures == 1 else f"{activity.failures} failures"
    return f"{tracks}, {failures}, ${activity.spend:.4f} spent"


def _dollars_or(amount: float, none: str) -> str:
    return f"${amount:.2f}" if amount else none
