"""The bot: one factory (`create_bot`) used by `jambot run`, `jambot sync` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.chat.delivery import DiscordJobEvents
from bot.chat.jam_commands import JamCommands
from bot.chat.music_command import build_music_command
from bot.jobs.limits import Limits
from bot.jobs.scheduler import Scheduler
from bot.jobs.store import JobStore
from bot.music.backend import MusicBackend
from bot.music.errors import GenerationError
from bot.music.isolation import warm_up
from bot.music.replicate import ReplicateBackend
from bot.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 8.0


class JamTree(app_commands.CommandTree["JamBot"]):
    """The one place where an exception from a command becomes a sentence for the user."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, GenerationError):
            text = original.user_message
        elif isinstance(
            error, app_commands.TransformerError | app_commands.CommandSignatureMismatch
        ):
            text = "That command's options didn't make sense; please check them and try again."
        else:
            log.error("command failed", exc_info=original)
            text = "Something went wrong on the bot's side; the owner can find it in the logs."
        try:
            if interaction.response.is_done():
                await interaction.edit_original_response(content=f"⚠️ {text}")
            else:
                await interaction.response.send_message(f"⚠️ {text}", ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report a command error to the user")


class AckGate:
    """Acknowledgements first: nothing else gets in the way of defers that are going out.

    Discord gives each command 3 seconds to be acknowledged. In a burst, the validation,
    limits and job inserts of the first commands would otherwise run between the defers of
    the later ones and delay them: follow-up work starts once no defer has begun for a short
    quiet period (a burst's frames arrive over a few milliseconds), or after `limit` at most.
    And while any defer is in flight the garbage collector waits, since one of its full
    passes stalls the event loop for tens of milliseconds.
    """

    QUIET = 0.02
    MAX_GC_HOLD = 1.0  # under steady traffic, let the collector run at least this often

    def __init__(self) -> None:
        self._pending = 0
        self._started = 0
        self._gc_held_since: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def acknowledging(self) -> AsyncIterator[None]:
        self._hold_gc()
        self._pending += 1
        self._started += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._release_gc()
                self._idle.set()

    def _hold_gc(self) -> None:
        now = time.monotonic()
        if self._gc_held_since is None:
            self._gc_held_since = now
            gc.disable()
        elif now - self._gc_held_since > self.MAX_GC_HOLD:
            gc.enable()  # no quiet gap for a while: collect between these defers after all

    def _release_gc(self) -> None:
        self._gc_held_since = None
        gc.enable()

    async def wait_until_quiet(self, limit: float = 1.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while True:
                    await self._idle.wait()
                    started = self._started
                    await asyncio.sleep(self.QUIET)
                    if self._started == started and self._idle.is_set():
                        return


class JamBot(commands.Bot):
    store: JobStore
    backend: MusicBackend
    limits: Limits
    scheduler: Scheduler

    def __init__(self, settings: Settings, *, serve: bool = True) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=JamTree,
            help_command=None,
        )
        self.settings = settings
        self.serve = serve  # False: only the command definitions, for `jambot sync`
        self.events = DiscordJobEvents(self)
        self.acks = AckGate()
        self.tree.add_command(build_music_command(self))
        self.tree.add_command(JamCommands(self))

    async def setup_hook(self) -> None:
        """Open what the bot needs before it takes commands, and resume unfinished jobs."""
        if not self.serve:
            return
        settings = self.settings
        self.store = await JobStore.open(settings.database_path, exclusive=True)
        self.backend = ReplicateBackend.from_settings(settings)
        self.limits = Limits(
            self.store,
            cooldown_seconds=settings.user_cooldown_seconds,
            daily_quota=settings.daily_quota_per_user,
            max_queued_per_user=settings.max_queued_per_user,
        )
        self.scheduler = Scheduler(
            self.store,
            self.backend,
            self.events,
            self.limits,
            max_concurrent=settings.max_concurrent_generations,
            cost_per_second=settings.replicate_cost_per_second,
        )
        await self.scheduler.start()
        # The audio worker's forkserver takes a few hundred ms to start: not on the first track.
        await warm_up(preload=["bot.cli"])
        # Everything alive now (modules, the command tree, clients) lives as long as the
        # process: take it out of the garbage collector's full passes, which otherwise stall
        # the event loop for tens of milliseconds right when a burst of commands arrives.
        gc.collect()
        gc.freeze()
        log.info("jambot ready to take /music (database %s)", settings.database_path)

    async def close(self) -> None:
        if hasattr(self, "scheduler"):
            await self.scheduler.close()
        await self.events.close()
        if hasattr(self, "backend"):
            await self.backend.aclose()
        if hasattr(self, "store"):
            await self.store.close()
        await super().close()


def point_discord_py_at(settings: Settings) -> None:
    """Aim discord.py's REST routes and gateway at the configured URLs (Discord by default)."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def create_bot(settings: Settings, *, serve: bool = True) -> JamBot:
    point_discord_py_at(settings)
    # jambot never joins voice: don't warn at every start that voice libraries are missing
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    return JamBot(settings, serve=serve)
