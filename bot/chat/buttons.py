"""The buttons on jambot's messages: Cancel while a job waits or runs; Regenerate, Variation and
Extend under a finished track.

Each button is a discord.py `DynamicItem` whose `custom_id` carries the job id
(`jam:<action>:<job id>`), registered in `setup_hook`: a click on a message posted before a
restart finds its job in the store, with nothing kept per message. Every click is acknowledged
first (Discord allows 3 s), through the same `AckGate` as `/music`.

Who may press what: Cancel, only the person who asked for the track or a member with Manage
Messages (anyone else gets a private sentence and nothing happens). Regenerate, Variation and
Extend, anyone: the new job is the clicker's, under the clicker's own limits, and arrives as a
new message so the original stays. A second click of the same button while the first one's job
is on its way makes nothing (the scheduler refuses a duplicate follow-up).
"""

from __future__ import annotations

import json
import logging
import random
import re
from typing import TYPE_CHECKING, Any, Self, cast

import discord

from bot.chat.jam_commands import CANCEL_ANSWERS
from bot.chat.music_command import FollowUp, load_rules, refuse, rules_refusal, submit_request
from bot.jobs.guild_settings import Rules
from bot.jobs.store import Job
from bot.music.audio import AudioError
from bot.music.errors import GenerationError, InvalidRequestError
from bot.music.isolation import continuation_clip
from bot.music.request import MusicRequest

if TYPE_CHECKING:
    from bot.chat.app import JamBot

log = logging.getLogger(__name__)

# A view only carries the buttons to Discord; the clicks are dispatched by the dynamic items.
# A short timeout lets discord.py forget each sent view instead of keeping one per message.
VIEW_TIMEOUT = 10.0
WAVEFORM_NAME = "waveform.png"  # the card's picture, not the track
MAX_TRACK_BYTES = 25 * 1024 * 1024
NOT_AVAILABLE = "⚠️ That track isn't available any more; make a new one with /music."
CANCEL_REFUSED = (
    "Only the person who asked for this track, or a member who can manage messages, can cancel it."
)

Button = discord.ui.Button[discord.ui.View]


def _bot(interaction: discord.Interaction) -> JamBot:
    return cast("JamBot", interaction.client)


class _JobButton(discord.ui.DynamicItem[Button], template=r"jam:never:(?P<job>[0-9]+)"):
    """A button for one job: its custom_id is `jam:<action>:<job id>`."""

    action = ""
    label = ""
    emoji = ""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji,
                style=discord.ButtonStyle.secondary,
                custom_id=f"jam:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(int(match["job"]))


class CancelButton(_JobButton, template=r"jam:cancel:(?P<job>[0-9]{1,19})"):
    """Leave the line, or stop the generation at Replicate (it stops costing money)."""

    action, label, emoji = "cancel", "Cancel", "✖️"

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        async with bot.acks.acknowledging(interaction.created_at):
            await interaction.response.defer(ephemeral=True, thinking=True)
        job = await bot.services.store.get(self.job_id)
        if job is None:
            await interaction.followup.send(NOT_AVAILABLE, ephemeral=True)
            return
        if interaction.user.id != job.user_id and not _manages_messages(interaction):
            log.info("user %d may not cancel job %d", interaction.user.id, job.id)
            await interaction.followup.send(CANCEL_REFUSED, ephemeral=True)
            return
        outcome = await bot.services.scheduler.cancel(job.id)
        await interaction.followup.send(CANCEL_ANSWERS[outcome].format(job=job.id), ephemeral=True)


def _manages_messages(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions.manage_messages)


class _FollowUpButton(_JobButton, template=r"jam:never:(?P<job>[0-9]+)"):
    """A button that makes a new job from a delivered one, for whoever clicks it."""

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        async with bot.acks.acknowledging(interaction.created_at):
            answer = await interaction.response.defer(thinking=True)  # a new message
        await bot.acks.wait_until_quiet()
        placeholder = answer.message_id if answer is not None else None
        parent = await bot.services.store.get(self.job_id)
        if parent is None or parent.status != "delivered":
            await interaction.edit_original_response(content=NOT_AVAILABLE)
            return
        if (rules := await load_rules(bot, interaction)) is None:
            return
        # the server's rules, before Extend uploads anything: they apply to what a track was
        # made from too (a word blocked since, a model turned off)
        refusal = rules_refusal(rules, MusicRequest.from_stored(parent.request_json))
        if refusal is not None:
            await refuse(interaction, refusal)
            return
        try:
            request, extend_json = await self.build(bot, interaction, parent, rules)
        except GenerationError as exc:
            log.info("%s of job %d refused: %s", self.action, parent.id, exc.detail)
            await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
            return
        follow_up = FollowUp(self.action, parent.id, extend_json)
        await submit_request(bot, interaction, request, placeholder, follow_up, rules=rules)

    async def build(
        self, bot: JamBot, interaction: discord.Interaction, parent: Job, rules: Rules
    ) -> tuple[MusicRequest, str | None]:
        """The new job's request (and, for Extend, what delivery needs to stitch), within the
        server's longest duration."""
        raise NotImplementedError


class RegenerateButton(_FollowUpButton, template=r"jam:regenerate:(?P<job>[0-9]{1,19})"):
    """The same options with a new random seed (even when the original had a fixed one)."""

    action, label, emoji = "regenerate", "Regenerate", "🔁"

    async def build(
        self, bot: JamBot, interaction: discord.Interaction, parent: Job, rules: Rules
    ) -> tuple[MusicRequest, str | None]:
        original = MusicRequest.from_stored(parent.request_json)
        return original.with_new_seed(random.Random(), max_duration=rules.max_duration), None


class VariationButton(_FollowUpButton, template=r"jam:variation:(?P<job>[0-9]{1,19})"):
    """The same seed with the temperature nudged: a close relative of the track."""

    action, label, emoji = "variation", "Variation", "🎲"

    async def build(
        self, bot: JamBot, interaction: discord.Interaction, parent: Job, rules: Rules
    ) -> tuple[MusicRequest, str | None]:
        original = MusicRequest.from_stored(parent.request_json)
        seed = parent.seed if parent.seed is not None else original.seed
        if seed is None:
            raise InvalidRequestError("This track's seed isn't known, so try Regenerate instead.")
        return original.varied(seed, max_duration=rules.max_duration), None


class ExtendButton(_FollowUpButton, template=r"jam:extend:(?P<job>[0-9]{1,19})"):
    """Continue this very track: its end goes to MusicGen as the clip to continue, and the
    delivered file is the original followed by the new music (see `extension_plan`)."""

    action, label, emoji = "extend", "Extend", "⏩"

    async def build(
        self, bot: JamBot, interaction: discord.Interaction, parent: Job, rules: Rules
    ) -> tuple[MusicRequest, str | None]:
        attachment = _track_attachment(interaction.message)
        if attachment is None:
            raise InvalidRequestError("That message has no track attached to extend.")
        cap = rules.max_duration
        if cap < 2:
            raise InvalidRequestError("Tracks here are too short to extend (the longest is 1 s).")
        data = await _read(attachment)
        try:
            clip = await continuation_clip(data, max_seconds=cap // 2)
        except AudioError as exc:
            raise InvalidRequestError("That track couldn't be read back to extend it.") from exc
        context, added = extension_plan(clip.total_seconds, clip.clip_seconds, cap)
        uri = await bot.services.backend.upload_audio(clip.wav, filename=f"jam-{parent.id}.wav")
        request = MusicRequest.from_stored(parent.request_json).continuing(
            uri, duration=round(context) + added, max_duration=cap
        )
        plan = {
            "source_url": attachment.url,
            "context_seconds": context,
            "original_seconds": clip.total_seconds,
            "added_seconds": added,
        }
        return request, json.dumps(plan)


def extension_plan(total: float, clip: float, cap: int) -> tuple[float, int]:
    """(seconds of the original given to the model, whole seconds of new music).

    The new music is as long as the original, so a short loop doubles, but the request (clip
    plus new music) must fit in `cap`: past that, the model continues the last half of the cap
    and adds the other half, and the original is kept in front, so a jam grows past the cap.
    """
    added = max(1, min(round(total), cap - round(clip)))
    return clip, added


def _track_attachment(message: discord.Message | None) -> discord.Attachment | None:
    if message is None:
        return None
    for attachment in message.attachments:
        if attachment.filename != WAVEFORM_NAME:
            return attachment
    return None


async def _read(attachment: discord.Attachment) -> bytes:
    if attachment.size > MAX_TRACK_BYTES:
        raise InvalidRequestError("That track is too large to extend.")
    try:
        return await attachment.read()
    except discord.HTTPException as exc:
        raise InvalidRequestError("That track couldn't be read back from Discord.") from exc


BUTTONS = (CancelButton, RegenerateButton, VariationButton, ExtendButton)


def cancel_view(job_id: int) -> discord.ui.View:
    """The Cancel button, for a job's placeholder while it waits or runs."""
    view = discord.ui.View(timeout=VIEW_TIMEOUT)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: int) -> discord.ui.View:
    """Regenerate, Variation and Extend, under a delivered track."""
    view = discord.ui.View(timeout=VIEW_TIMEOUT)
    for button in (RegenerateButton, VariationButton, ExtendButton):
        view.add_item(button(job_id))
    return view
