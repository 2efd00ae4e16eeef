"""/jam history | queue | quota | cancel — everything besides /music, answered privately."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.chat import render
from bot.jobs.scheduler import CancelOutcome
from bot.jobs.store import Job

if TYPE_CHECKING:
    from bot.chat.app import JamBot


CANCEL_ANSWERS = {
    CancelOutcome.CANCELLED: "Cancelled job #{job}.",
    CancelOutcome.DELIVERED: "Job #{job} was already delivered, so there is nothing to cancel.",
    CancelOutcome.FINISHED: "Job #{job} has already finished.",
    CancelOutcome.UNAVAILABLE: "The bot's database is busy; please try again in a minute.",
}


class JamCommands(app_commands.Group):
    def __init__(self, bot: JamBot) -> None:
        super().__init__(name="jam", description="Your tracks, the queue and your quota")
        self.bot = bot

    @app_commands.command(name="history", description="Your last 10 tracks")
    async def history(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await self.bot.services.store.recent_for_user(interaction.user.id, limit=10)
        if not jobs:
            await interaction.followup.send("You haven't made any tracks yet: try `/music`.")
            return
        lines = [render.history_line(job, _link(job)) for job in jobs]
        await interaction.followup.send(render.clip("\n".join(lines), render.CONTENT_LIMIT))

    @app_commands.command(name="queue", description="What's waiting, and your place in line")
    async def queue(self, interaction: discord.Interaction) -> None:
        services = self.bot.services
        # read from the store: the line and the running jobs of every process sharing it
        waiting = await services.scheduler.line()
        running = await services.store.running_count()
        mine = [
            f"`#{job.id}` is **{render.ordinal(place)}** in line"
            for place, job in enumerate(waiting, start=1)
            if job.user_id == interaction.user.id
        ]
        summary = f"{running} generating, {len(waiting)} waiting."
        text = summary + ("\n" + "\n".join(mine) if mine else "\nNone of them are yours.")
        await interaction.response.send_message(render.clip(text, 2000), ephemeral=True)

    @app_commands.command(name="quota", description="How many tracks you have left today")
    async def quota(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = self.bot.services
        rules = await services.rules.rules_for(interaction.guild_id)
        used, quota, reset_at = await services.limits.remaining_today(interaction.user.id, rules)
        if quota == 0:
            text = f"No daily limit here. You've made {used} track(s) today."
        else:
            left = max(quota - used, 0)
            text = (
                f"You have **{left}** of {quota} tracks left today; "
                f"the quota resets {render.reset_text(reset_at)}."
            )
        await interaction.followup.send(text)

    @app_commands.command(name="cancel", description="Cancel one of your waiting or running tracks")
    @app_commands.describe(job="The job number, as shown by /jam queue or /jam history")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.bot.services.store.get(job)
        if found is None or found.user_id != interaction.user.id:
            await interaction.followup.send(f"You have no job #{job}.")
            return
        outcome = await self.bot.services.scheduler.cancel(job)
        await interaction.followup.send(CANCEL_ANSWERS[outcome].format(job=job))


def _link(job: Job) -> str | None:
    if job.delivered_message_id is None or job.delivered_channel_id is None:
        return None
    guild = job.guild_id if job.guild_id is not None else "@me"
    return (
        f"https://discord.com/channels/{guild}/{job.delivered_channel_id}/"
        f"{job.delivered_message_id}"
    )
