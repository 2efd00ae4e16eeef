"""Progress and result messages for jobs, and the fallback when an interaction token is dead.

Edits go to the original reply through the interaction's webhook while its token lives (15
minutes); after that, or when Discord says the token is invalid, the result is posted in the
channel with the bot token, mentioning only the requester.

A channel post carries a nonce derived from the job with ``enforce_nonce``: if a process dies
between the post and the commit of the delivery, the next one posts again with the same nonce
and Discord answers with the message it already made instead of a second copy.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import aiohttp
import discord

from bot.chat import render
from bot.chat.buttons import cancel_view, result_view
from bot.clock import utc_now
from bot.jobs.budget import WARN_AT, BudgetUse
from bot.jobs.scheduler import Claim, Delivery, DeliveryError
from bot.jobs.store import Job, StoreError
from bot.music.audio import AudioError, ExpectedAudio
from bot.music.backend import Progress, Track
from bot.music.errors import GenerationError, OutputError
from bot.music.isolation import fit_again, prepare_track, stitch_extension
from bot.music.request import AudioFormat, MusicRequest
from bot.music.tags import TrackTags
from bot.naming import track_filename

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_EDIT_INTERVAL = 2.0
TOKEN_MARGIN = timedelta(seconds=30)
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
DEAD_TOKEN = {(401, 50027), (404, 10015)}
MAX_SHRINKS = 3
WAVEFORM_NAME = "waveform.png"
MAX_ORIGINAL_BYTES = 25 * 1024 * 1024
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=60)
# Finished jobs remembered so that a progress edit still in flight can't overwrite the result;
# such edits land within moments of the end, so the most recent few thousand are plenty.
RECENTLY_DONE = 4096

Files = Sequence[tuple[str, bytes]]  # (filename, contents)
BudgetReport = Callable[[int | None], Awaitable[list[BudgetUse]]]  # guild id → today's use


class TokenDead(Exception):
    """The interaction token can no longer edit the reply."""


class DiscordJobEvents:
    """The scheduler's view of Discord: shows queue places and progress, delivers results."""

    def __init__(self, bot: discord.Client, *, budget_use: BudgetReport | None = None) -> None:
        """`budget_use` tells the track card how full today's budgets are (None: never)."""
        self._bot = bot
        self._budget_use = budget_use
        self._live: dict[int, discord.Interaction] = {}
        self._last_edit: dict[int, float] = {}  # job → when its last progress edit went out
        self._latest: dict[int, str] = {}  # job → progress text not shown yet
        self._flushers: dict[int, asyncio.Task[None]] = {}  # job → edit waiting for its turn
        self._locks: dict[int, asyncio.Lock] = {}
        self._done: set[int] = set()
        self._done_order: deque[int] = deque()

    def attach(self, job_id: int, interaction: discord.Interaction) -> None:
        """Remember the live interaction of a job submitted by this process."""
        self._live[job_id] = interaction

    # -- JobEvents ----------------------------------------------------------------------------

    async def on_queued(self, job: Job, position: int) -> None:
        await self._status(job, render.queued_text(position))

    async def on_progress(self, job: Job, progress: Progress) -> None:
        await self._status(job, render.progress_text(progress))

    async def on_failed(self, job: Job, error: GenerationError) -> None:
        await self._final(job, content=render.failure_text(error.user_message))

    async def on_cancelled(self, job: Job) -> None:
        await self._final(job, content="✖️ Cancelled — nothing was generated or delivered.")

    def on_ended(self, job_id: int) -> None:
        self._mark_done(job_id)
        self._forget(job_id)

    def footprint(self) -> dict[str, int]:
        """Entries kept per job: bounded by the jobs in flight (plus RECENTLY_DONE)."""
        return {
            "live": len(self._live),
            "last_edit": len(self._last_edit),
            "latest": len(self._latest),
            "flushers": len(self._flushers),
            "locks": len(self._locks),
            "done": len(self._done),
        }

    async def on_finished(
        self, job: Job, track: Track, *, resumed: bool, claim: Claim
    ) -> Delivery | None:
        if resumed and (earlier := await self._already_delivered(job)) is not None:
            log.info("job %d: already delivered by an earlier run", job.id)
            return earlier
        request = MusicRequest.from_stored(job.request_json)
        audio, expected = await self._audio_to_post(job, track, request)
        tags = TrackTags(
            prompt=request.prompt,
            seed=track.seed,
            model=request.model_version.value,
            duration_seconds=expected.seconds,
            extended_from=f"jambot job {job.parent_job_id}" if job.action == "extend" else None,
        )
        prepared = await _unusable_audio_fails(
            prepare_track(audio, expected, self._upload_limit(job), tags=tags)
        )
        fitted, picture = prepared.fitted, prepared.waveform
        buttons = result_view(job.id)
        budgets = await self._budget_notes(job)
        for _ in range(MAX_SHRINKS):
            if fitted is None:
                break
            embed = render.track_embed(
                request,
                track,
                fitted.description,
                seconds=expected.seconds,
                lineage=_lineage(job),
                cost=job.cost_estimate if job.cost_estimate is not None else job.expected_cost,
                budgets=budgets,
            )
            files = [(track_filename(request.prompt, track.seed, fitted.extension), fitted.data)]
            if picture:
                embed.set_image(url=f"attachment://{WAVEFORM_NAME}")
                files.append((WAVEFORM_NAME, picture))
            if not await claim():
                return None
            try:
                return await self._final(job, embed=embed, files=files, view=buttons)
            except discord.HTTPException as exc:
                if exc.status != 413:
                    raise DeliveryError(f"Discord answered {exc.status} ({exc.code})") from exc
                sent = len(fitted.data) + len(picture)
                log.info("job %d: %d bytes refused (413); shrinking", job.id, sent)
                fitted = await _unusable_audio_fails(
                    fit_again(audio, int(sent * 0.8) - len(picture), tags=tags)
                )
        if not await claim():
            return None
        return await self._final(job, content=render.too_large_text(track), view=buttons)

    async def _budget_notes(self, job: Job) -> list[str]:
        """A line for each budget this track has brought to WARN_AT or past it (this job's
        cost is recorded by now, so it is counted)."""
        if self._budget_use is None:
            return []
        try:
            uses = await self._budget_use(job.guild_id)
        except StoreError as exc:  # the card goes out without it
            log.warning("job %d: today's budgets unknown: %s", job.id, exc.detail)
            return []
        return [render.budget_note(use) for use in uses if use.fraction >= WARN_AT]

    async def _audio_to_post(
        self, job: Job, track: Track, request: MusicRequest
    ) -> tuple[bytes, ExpectedAudio]:
        """The bytes to deliver and what they must be: Replicate's output, or for Extend the
        original track followed by the continuation (the original is read again from the
        message it was delivered in). If the original can't be read any more, the
        continuation is delivered alone, which is still what was paid for."""
        expected = ExpectedAudio.for_request(request)
        plan = ExtensionPlan.from_job(job)
        if plan is None:
            return track.data, expected
        original = await _download(plan.source_url)
        if original is None:
            log.warning("job %d: the original track is gone; delivering the continuation", job.id)
            return track.data, expected
        stitched = await _unusable_audio_fails(
            stitch_extension(original, track.data, plan.context_seconds, expected)
        )
        seconds = plan.original_seconds + expected.seconds - plan.context_seconds
        return stitched, replace(expected, seconds=seconds, format=AudioFormat.WAV)

    # -- editing --------------------------------------------------------------------------------

    async def _status(self, job: Job, text: str) -> None:
        """Show a queue place or progress: at most one edit every PROGRESS_EDIT_INTERVAL
        seconds per job, always ending on the newest text; nothing once the job is done."""
        if job.id in self._done or self._token_expired(job):
            return
        self._latest[job.id] = text
        if job.id in self._flushers:
            return  # an edit is already waiting for its turn; it will show this text
        wait = self._last_edit.get(job.id, -1e9) + PROGRESS_EDIT_INTERVAL - _now()
        if wait <= 0:
            await self._show_latest(job)
        else:
            self._flushers[job.id] = asyncio.create_task(self._show_later(job, wait))

    async def _show_later(self, job: Job, wait: float) -> None:
        await asyncio.sleep(wait)
        self._flushers.pop(job.id, None)
        await self._show_latest(job)

    async def _show_latest(self, job: Job) -> None:
        text = self._latest.pop(job.id, None)
        if text is None:
            return
        self._last_edit[job.id] = _now()
        async with self._lock(job.id):
            if job.id in self._done:
                return
            try:
                await self._edit(job, content=text, view=cancel_view(job.id))
            except (TokenDead, discord.HTTPException) as exc:
                log.info("job %d: progress edit skipped: %s", job.id, exc)

    async def close(self) -> None:
        """Drop the progress edits still waiting for their turn."""
        flushers = list(self._flushers.values())
        for task in flushers:
            task.cancel()
        await asyncio.gather(*flushers, return_exceptions=True)

    async def _final(
        self,
        job: Job,
        *,
        content: str | None = None,
        embed: discord.Embed | None = None,
        files: Files = (),
        view: discord.ui.View | None = None,
    ) -> Delivery:
        """The one last message of a job: the reply edited, or a channel post if that fails.
        Its buttons are `view`'s; with None the Cancel button goes and nothing replaces it."""
        async with self._lock(job.id):
            self._mark_done(job.id)
            try:
                if not self._token_expired(job):
                    return await self._edit(
                        job, content=content or "", embed=embed, files=files, view=view
                    )
            except TokenDead as exc:
                log.info("job %d: interaction token dead (%s); posting in channel", job.id, exc)
            finally:
                self._forget(job.id)
            return await self._post_in_channel(
                job, content=content, embed=embed, files=files, view=view
            )

    async def _edit(
        self,
        job: Job,
        *,
        content: str | None = None,
        embed: discord.Embed | None = None,
        files: Files = (),
        view: discord.ui.View | None,
    ) -> Delivery:
        fields: dict[str, Any] = {"content": content, "embed": embed, "view": view}
        if files:
            fields["attachments"] = _discord_files(files)
        message: discord.Message
        try:
            interaction = self._live.get(job.id)
            if interaction is not None:
                message = await interaction.edit_original_response(**fields)
            elif job.message_id is not None:
                webhook = discord.Webhook.partial(job.application_id, job.token, client=self._bot)
                message = await webhook.edit_message(job.message_id, **fields)
            else:
                raise TokenDead("no placeholder message to edit")
        except discord.HTTPException as exc:
            if (exc.status, exc.code) in DEAD_TOKEN:
                raise TokenDead(f"{exc.status}/{exc.code}") from exc
            raise
        return Delivery(message_id=message.id, channel_id=message.channel.id)

    async def _post_in_channel(
        self,
        job: Job,
        *,
        content: str | None,
        embed: discord.Embed | None,
        files: Files,
        view: discord.ui.View | None,
    ) -> Delivery:
        channel = self._bot.get_partial_messageable(job.channel_id)
        mention = f"<@{job.user_id}> "
        text = render.clip(mention + (content or "here's your track."), render.CONTENT_LIMIT)
        try:
            message = await channel.send(
                content=text,
                embed=embed or discord.utils.MISSING,
                files=_discord_files(files),
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
                nonce=delivery_nonce(job),
                view=view or discord.utils.MISSING,
            )
        except discord.HTTPException as exc:
            if exc.status == 413:
                raise  # the caller shrinks the file and tries again
            raise DeliveryError(f"channel post answered {exc.status} ({exc.code})") from exc
        return Delivery(message_id=message.id, channel_id=message.channel.id)

    async def _already_delivered(self, job: Job) -> Delivery | None:
        """After a restart: does the reply already carry a track? Then don't post it again."""
        if job.message_id is None or self._token_expired(job):
            return None
        webhook = discord.Webhook.partial(job.application_id, job.token, client=self._bot)
        try:
            message = await webhook.fetch_message(job.message_id)
        except discord.HTTPException:
            return None
        if not message.attachments:
            return None
        return Delivery(message_id=message.id, channel_id=message.channel.id)

    # -- helpers ----------------------------------------------------------------------------------

    def _upload_limit(self, job: Job) -> int:
        interaction = self._live.get(job.id)
        if interaction is not None:
            return interaction.filesize_limit
        guild = self._bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    @staticmethod
    def _token_expired(job: Job) -> bool:
        return utc_now() >= job.token_expires_at - TOKEN_MARGIN

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _mark_done(self, job_id: int) -> None:
        if job_id in self._done:
            return
        self._done.add(job_id)
        self._done_order.append(job_id)
        while len(self._done_order) > RECENTLY_DONE:
            self._done.discard(self._done_order.popleft())

    def _forget(self, job_id: int) -> None:
        """Drop a finished job's state; `_done` stays, so a late progress edit is skipped."""
        self._live.pop(job_id, None)
        self._last_edit.pop(job_id, None)
        self._latest.pop(job_id, None)
        self._locks.pop(job_id, None)
        flusher = self._flushers.pop(job_id, None)
        if flusher is not None:
            flusher.cancel()


def _now() -> float:
    return asyncio.get_running_loop().time()


def delivery_nonce(job: Job) -> str:
    """The same for every post of one job's outcome (at most 25 characters, as Discord asks):
    the interaction's id is unique to the job."""
    return f"j{job.interaction_id}"[:25]


async def _unusable_audio_fails(work: Awaitable[T]) -> T:
    """Audio work on Replicate's output; bytes that aren't the track asked for fail the job
    (permanently: a resumed job would only meet the same file again)."""
    try:
        return await work
    except AudioError as exc:
        raise OutputError(
            "Replicate returned a file that isn't the audio asked for, so there is no track "
            "to post; please try again.",
            f"output audio rejected: {exc}",
        ) from exc


@dataclass(frozen=True)
class ExtensionPlan:
    """What an Extend job recorded at the click: where the original can be read again, how
    many seconds of its end the model was given, and how long it was."""

    source_url: str
    context_seconds: float
    original_seconds: float

    @classmethod
    def from_job(cls, job: Job) -> ExtensionPlan | None:
        if job.action != "extend" or not job.extend_json:
            return None
        plan = json.loads(job.extend_json)
        return cls(
            str(plan["source_url"]),
            float(plan["context_seconds"]),
            float(plan["original_seconds"]),
        )


async def _download(url: str) -> bytes | None:
    """A delivered track, read again from Discord's CDN (signed links last about a day)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                log.info("original track answered %d", response.status)
                return None
            data = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                data += chunk
                if len(data) > MAX_ORIGINAL_BYTES:
                    return None
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("original track unreadable: %s", type(exc).__name__)
        return None
    return bytes(data) if data else None


def _lineage(job: Job) -> str | None:
    parent = job.parent_job_id
    return {
        "regenerate": f"Regenerated from #{parent}",
        "variation": f"A variation of #{parent}",
        "extend": f"Extended from #{parent}",
    }.get(job.action)


def _discord_files(files: Files) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in files]
