"""/jamadmin config | stats — a server's own jambot settings and its activity, for its managers.

A top-level command of its own rather than more /jam subcommands: Discord applies
``default_member_permissions`` to a whole top-level command, so only a separate group can be
hidden from members without Manage Server while /jam stays in everyone's command list.
Server admins can still adjust who sees it under Server Settings → Integrations. The
permission is checked again here, whatever the command list shows: these settings decide
what the server may spend, so only a member who can manage the server may read or change
them. Every answer is private.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bot.chat import render
from bot.clock import utc_now
from bot.jobs.guild_settings import Change, SettingError, parse_models, parse_words, resolve
from bot.jobs.stats import guild_stats
from bot.jobs.store import StoreError

if TYPE_CHECKING:
    from bot.chat.app import JamBot

log = logging.getLogger(__name__)

NOT_IN_A_SERVER = "These settings belong to a server: use this command in one."
NOT_A_MANAGER = "Only members who can manage this server can see or change jambot's settings here."
STORE_BUSY = "⚠️ The bot's database is busy right now; please try again in a minute."

ResetName = Literal[
    "daily_budget", "daily_quota", "cooldown", "max_duration", "models", "blocked_words", "all"
]


class AdminCommands(app_commands.Group):
    def __init__(self, bot: JamBot) -> None:
        super().__init__(
            name="jamadmin",
            description="This server's jambot settings and stats (Manage Server)",
            default_permissions=discord.Permissions(manage_guild=True),
            guild_only=True,
        )
        self.bot = bot

    @app_commands.command(name="config", description="Show or change jambot's settings here")
    @app_commands.describe(
        daily_budget="Dollars this server may spend per UTC day (0: no cap)",
        daily_quota="Tracks each member may make here per UTC day (0: no limit)",
        cooldown="Seconds a member waits between two tracks",
        max_duration="Longest track, in seconds",
        models="The models members may use, comma-separated (e.g. stereo-large, large)",
        block="Words or phrases to refuse in prompts, comma-separated",
        unblock="Blocked words to allow again, comma-separated",
        reset="Put one setting, or all of them, back to the bot's default",
    )
    async def config(
        self,
        interaction: discord.Interaction,
        daily_budget: app_commands.Range[float, 0.0, 100_000.0] | None = None,
        daily_quota: app_commands.Range[int, 0, 1_000_000] | None = None,
        cooldown: app_commands.Range[int, 0, 86_400] | None = None,
        max_duration: app_commands.Range[int, 1, 300] | None = None,
        models: app_commands.Range[str, 1, 200] | None = None,
        block: app_commands.Range[str, 1, 1000] | None = None,
        unblock: app_commands.Range[str, 1, 1000] | None = None,
        reset: ResetName | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = await _managed_guild(interaction)
        if guild_id is None:
            return
        book = self.bot.services.rules
        try:
            change = Change(
                daily_budget_usd=daily_budget,
                daily_quota=daily_quota,
                cooldown_seconds=None if cooldown is None else float(cooldown),
                max_duration=max_duration,
                allowed_models=None if models is None else parse_models(models),
                block=parse_words(block) if block else (),
                unblock=parse_words(unblock) if unblock else (),
                reset=(reset,) if reset else (),
            )
            if change.is_empty:
                settings = await book.settings(guild_id)
            else:
                settings = await book.change(guild_id, change, by=interaction.user.id)
                log.info("server %d: settings changed by %d", guild_id, interaction.user.id)
        except SettingError as exc:
            await interaction.followup.send(f"⚠️ {exc}")
            return
        except StoreError as exc:
            log.warning("server %d: settings unavailable: %s", guild_id, exc.detail)
            await interaction.followup.send(STORE_BUSY)
            return
        rules = resolve(guild_id, settings, book.defaults)
        await interaction.followup.send(render.settings_text(settings, rules, book.defaults))

    @app_commands.command(name="stats", description="Tracks, spend and the most active members")
    async def stats(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = await _managed_guild(interaction)
        if guild_id is None:
            return
        services = self.bot.services
        try:
            figures = await guild_stats(services.store, guild_id, utc_now())
            budgets = await services.budget_use(guild_id)
        except StoreError as exc:
            log.warning("server %d: stats unavailable: %s", guild_id, exc.detail)
            await interaction.followup.send(STORE_BUSY)
            return
        await interaction.followup.send(
            render.stats_text(figures, budgets), allowed_mentions=discord.AllowedMentions.none()
        )


async def _managed_guild(interaction: discord.Interaction) -> int | None:
    """The server's id if the member may manage it; else None, the member told why."""
    if interaction.guild_id is None:
        await interaction.followup.send(NOT_IN_A_SERVER)
        return None
    if not interaction.permissions.manage_guild:
        log.info("user %d may not manage server %d", interaction.user.id, interaction.guild_id)
        await interaction.followup.send(NOT_A_MANAGER)
        return None
    return interaction.guild_id
