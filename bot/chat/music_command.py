"""/music: options → MusicRequest → the scheduler. A top-level command with no subcommands.

(No `from __future__ import annotations` here: discord.py reads the parameter annotations,
and the duration range comes from settings at run time.)
"""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands

from bot.jobs.guild_settings import Rules
from bot.jobs.limits import Refusal
from bot.jobs.store import NewJob, StoreError
from bot.music.audio import AudioError, AudioInfo
from bot.music.errors import InvalidRequestError
from bot.music.isolation import probe_untrusted
from bot.music.request import (
    MAX_GUIDANCE,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MusicRequest,
)

if TYPE_CHECKING:
    from bot.chat.app import JamBot

log = logging.getLogger(__name__)

NOT_AUDIO = "audio must be an audio file (WAV, MP3, FLAC or Ogg) that plays: that one doesn't."
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".m4a", ".aac", ".opus")
MAX_AUDIO_BYTES = 25 * 1024 * 1024
BLOCKED = "That prompt uses a word this server has blocked."
STORE_BUSY = "⚠️ The bot's database is busy right now; please try again in a minute."

ModelName = Literal["stereo-melody-large", "stereo-large", "melody-large", "large"]
FormatName = Literal["wav", "mp3"]
NormalizationName = Literal["loudness", "clip", "peak", "rms"]


def build_music_command(bot: "JamBot") -> app_commands.Command[Any, Any, None]:
    max_duration = bot.settings.max_duration_seconds

    @app_commands.command(name="music", description="Make a track with MusicGen from a prompt")
    @app_commands.describe(
        prompt="What the music should sound like, e.g. 'warm lofi beat with vinyl crackle'",
        duration=f"Length in seconds (1-{max_duration}, default 8)",
        model="MusicGen model (default stereo-large; melody models can follow `audio`)",
        temperature="Randomness of sampling (default 1.0)",
        top_k="Sample from the k most likely tokens (default 250)",
        top_p="Nucleus sampling; 0 uses top_k instead (default 0)",
        guidance="Classifier-free guidance: how closely to follow the prompt (default 3)",
        output_format="File format MusicGen returns (default wav)",
        normalization="Loudness normalization strategy (default loudness)",
        seed="Fix the seed to reproduce a track (default random)",
        audio="A melody to follow, or a clip to continue (with continuation)",
        continuation="Continue the attached audio instead of following its melody",
    )
    async def music(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        duration: app_commands.Range[int, 1, max_duration] = 8,
        model: ModelName = "stereo-large",
        temperature: app_commands.Range[float, 0.01, MAX_TEMPERATURE] = 1.0,
        top_k: app_commands.Range[int, 0, MAX_TOP_K] = 250,
        top_p: app_commands.Range[float, 0.0, 1.0] = 0.0,
        guidance: app_commands.Range[int, 0, MAX_GUIDANCE] = 3,
        output_format: FormatName = "wav",
        normalization: NormalizationName = "loudness",
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        audio: discord.Attachment | None = None,
        continuation: bool = False,
    ) -> None:
        async with bot.acks.acknowledging(interaction.created_at):
            answer = await interaction.response.defer(thinking=True)  # first, before other I/O
        await bot.acks.wait_until_quiet()
        options: dict[str, Any] = {
            "prompt": prompt,
            "duration": duration,
            "model": model,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "guidance": guidance,
            "output_format": output_format,
            "normalization": normalization,
            "seed": seed,
            "continuation": continuation,
        }
        placeholder = answer.message_id if answer is not None else None
        await submit_music(bot, interaction, options, audio, placeholder)

    return music


async def submit_music(
    bot: "JamBot",
    interaction: discord.Interaction,
    options: dict[str, Any],
    audio: discord.Attachment | None,
    placeholder_id: int | None,
) -> None:
    """Validate, check limits, enqueue; every refusal is one sentence and costs nothing.

    `options` are `MusicRequest.from_options`' keyword arguments, the attachment aside.
    """
    rules = await load_rules(bot, interaction)
    if rules is None:
        return
    if rules.blocks(str(options.get("prompt", ""))):  # before the attachment is even read
        await refuse(interaction, Refusal("blocked", None, BLOCKED))
        return
    try:
        clip = await _checked_audio(audio) if audio is not None else None
        request = MusicRequest.from_options(
            **options,
            input_audio=clip[0] if clip else None,
            max_duration=rules.max_duration,
        )
        if clip is not None:
            _check_clip_length(request, clip[1])
    except InvalidRequestError as exc:
        log.info("rejected /music from user %d: %s", interaction.user.id, exc.user_message)
        await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
        return
    await submit_request(bot, interaction, request, placeholder_id, rules=rules)


async def load_rules(bot: "JamBot", interaction: discord.Interaction) -> Rules | None:
    """The rules where the command was sent; None (the user told why) if the store fails."""
    try:
        return await bot.services.rules.rules_for(interaction.guild_id)
    except StoreError as exc:
        log.warning("could not read the server's settings: %s", exc.detail)
        await interaction.edit_original_response(content=STORE_BUSY)
        return None


def rules_refusal(rules: Rules, request: MusicRequest) -> Refusal | None:
    """What the server's own rules say against a request: a blocked word, a model it turned
    off. The word itself is never repeated (the answer may be read over a shoulder)."""
    if rules.blocks(request.prompt):
        return Refusal("blocked", None, BLOCKED)
    model = request.model_version.value
    if not rules.allows(model):
        allowed = ", ".join(rules.allowed_models)
        return Refusal("model", None, f"This server doesn't use {model}; it allows: {allowed}.")
    return None


@dataclass(frozen=True)
class FollowUp:
    """A job made from another job's track by one of its buttons."""

    action: str  # regenerate | variation | extend
    parent_job_id: int
    extend_json: str | None = None


async def submit_request(
    bot: "JamBot",
    interaction: discord.Interaction,
    request: MusicRequest,
    placeholder_id: int | None,
    follow_up: FollowUp | None = None,
    *,
    rules: Rules | None = None,
) -> None:
    """Check the server's rules and the user's limits and enqueue a validated request, from
    /music or a button. `rules` are the server's, if the caller has read them already."""
    if rules is None and (rules := await load_rules(bot, interaction)) is None:
        return
    refusal = rules_refusal(rules, request)
    if refusal is not None:
        await refuse(interaction, refusal)
        return
    new_job = _new_job(interaction, request, placeholder_id, follow_up)
    result = await bot.services.scheduler.submit(new_job, rules)
    if isinstance(result, Refusal):
        await refuse(interaction, result)
        return
    bot.events.attach(result.id, interaction)


def _check_clip_length(request: MusicRequest, clip: AudioInfo) -> None:
    """A continuation adds to its clip within `duration`: a clip as long leaves nothing to make
    (the model would be paid to hand the clip back)."""
    if request.continuation and clip.duration_seconds >= request.duration:
        raise InvalidRequestError(
            f"audio is {clip.duration_seconds:.0f}s long, longer than the track you asked for "
            f"({request.duration}s): a continuation is the clip plus new music, so ask for a "
            "longer duration or a shorter clip."
        )


async def _checked_audio(audio: discord.Attachment) -> tuple[str, AudioInfo]:
    """The attachment's URL and what it holds, once its bytes have been read and decode as
    audio: a text file named .wav would otherwise be sent to Replicate and paid for."""
    content_type = (audio.content_type or "").split(";")[0]
    if not content_type.startswith("audio/") and not audio.filename.lower().endswith(
        AUDIO_EXTENSIONS
    ):
        raise InvalidRequestError(NOT_AUDIO)
    if audio.size > MAX_AUDIO_BYTES:
        raise InvalidRequestError("audio must be at most 25 MB.")
    try:
        data = await audio.read()
    except discord.HTTPException as exc:
        raise InvalidRequestError(
            "The attached audio couldn't be read from Discord; please attach it again."
        ) from exc
    try:
        info = await probe_untrusted(data)
    except AudioError as exc:
        log.info("attachment %s refused: %s", audio.id, exc)
        raise InvalidRequestError(NOT_AUDIO) from exc
    log.debug("attachment %s: %s", audio.id, info.describe())
    return audio.url, info


def _new_job(
    interaction: discord.Interaction,
    request: MusicRequest,
    placeholder_id: int | None,
    follow_up: FollowUp | None,
) -> NewJob:
    assert interaction.channel_id is not None
    lineage: dict[str, Any] = {}
    if follow_up is not None:
        lineage = {
            "action": follow_up.action,
            "parent_job_id": follow_up.parent_job_id,
            "extend_json": follow_up.extend_json,
        }
    return NewJob(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user.id,
        interaction_id=interaction.id,
        application_id=interaction.application_id,
        token=interaction.token,
        token_expires_at=interaction.expires_at,
        request_json=request.model_dump_json(),
        message_id=placeholder_id,
        **lineage,
    )


async def refuse(interaction: discord.Interaction, refusal: Refusal) -> None:
    """Limits answer privately: the public placeholder goes, an ephemeral sentence stays."""
    await interaction.delete_original_response()
    mark = "🚫" if refusal.reason in ("blocked", "model") else "⏱️"
    await interaction.followup.send(f"{mark} {refusal.message}", ephemeral=True)
