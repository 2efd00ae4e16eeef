"""The bot: one factory (`create_bot`) used by `jambot run`, `jambot sync` and the tests."""

from __future__ import annotations

import gc
import logging
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.chat.acks import AckGate
from bot.chat.admin_commands import AdminCommands
from bot.chat.buttons import BUTTONS
from bot.chat.delivery import DiscordJobEvents
from bot.chat.jam_commands import JamCommands
from bot.chat.music_command import build_music_command
from bot.chat.services import Services
from bot.jobs.budget import BudgetUse
from bot.music.errors import GenerationError
from bot.music.isolation import warm_up
from bot.ops.health import HealthCheck
from bot.ops.metrics import Metrics
from bot.ops.server import OpsServer
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


class JamBot(commands.Bot):
    """The bot: commands on a `JamTree`, and once `setup_hook` has run, its `services`.

    One gateway connection for every guild (SHARD_COUNT=0); `ShardedJamBot` holds shards.
    """

    def __init__(self, settings: Settings, *, serve: bool = True) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=JamTree,
            help_command=None,
            **self.gateway_options(settings),
        )
        self.settings = settings
        self.serve = serve  # False: only the command definitions, for `jambot sync`
        self.events = DiscordJobEvents(self, budget_use=self._budget_use)
        # Counted from the start, whether or not METRICS_PORT serves them: a counter costs
        # nothing, and the tests read them without a server.
        self.metrics = Metrics(cost_per_second=settings.replicate_cost_per_second)
        self.acks = AckGate(self.metrics)
        self.health = HealthCheck(self, lambda: self._services)
        self._ops: OpsServer | None = None
        self._services: Services | None = None
        self.tree.add_command(build_music_command(self))
        self.tree.add_command(JamCommands(self))
        self.tree.add_command(AdminCommands(self))

    @staticmethod
    def gateway_options(settings: Settings) -> dict[str, Any]:
        """discord.py's options for the gateway connection: none, one connection."""
        return {}

    async def setup_hook(self) -> None:
        """Open what the bot needs before it takes commands, and resume unfinished jobs."""
        if not self.serve:
            return
        settings = self.settings
        # Buttons find their job from their custom_id: clicks on messages from before a
        # restart work too.
        self.add_dynamic_items(*BUTTONS)
        if settings.metrics_port:  # first: a taken port stops the start before any job resumes
            self._ops = await OpsServer.start(
                settings.metrics_host, settings.metrics_port, self.metrics, self.health.problem
            )
        self._services = services = await Services.open(settings, self.events, self.metrics)
        self.metrics.watch_queue(
            lambda: len(services.scheduler.waiting()), lambda: services.scheduler.running_count
        )
        # The audio worker's forkserver takes a few hundred ms to start: not on the first track.
        await warm_up(preload=["bot.cli"])
        # Everything alive now (modules, the command tree, clients) lives as long as the
        # process: take it out of the garbage collector's full passes, which otherwise stall
        # the event loop for tens of milliseconds right when a burst of commands arrives.
        gc.collect()
        gc.freeze()
        log.info("jambot ready to take /music (database %s)", settings.database_label)

    async def _budget_use(self, guild_id: int | None) -> list[BudgetUse]:
        return await self.services.budget_use(guild_id)

    @property
    def services(self) -> Services:
        """The store, backend, limits and scheduler; they exist only while the bot serves."""
        if self._services is None:
            raise RuntimeError(
                "the bot's services aren't open: setup_hook hasn't run (or serve=False)"
            )
        return self._services

    async def close(self) -> None:
        # The services stay referenced once closed: a command still in flight then hears the
        # scheduler's "restarting" refusal rather than meeting a missing attribute.
        ops, self._ops = self._ops, None
        if ops is not None:
            await ops.close()
        if self._services is not None:
            await self._services.close()
        await self.events.close()
        await super().close()


class ShardedJamBot(JamBot, commands.AutoShardedBot):
    """The bot holding SHARD_IDS of SHARD_COUNT shards (all of them without SHARD_IDS).

    One gateway connection per shard; Discord sends each the events of its guilds (a guild's
    shard is ``(guild_id >> 22) % SHARD_COUNT``, DMs go to shard 0). Several processes with
    the same SHARD_COUNT and different SHARD_IDS share the bot's guilds between them.
    SHARD_COUNT is always given: without it discord.py would ask Discord how many to run.
    """

    @staticmethod
    def gateway_options(settings: Settings) -> dict[str, Any]:
        return {"shard_count": settings.shard_count, "shard_ids": settings.shard_id_list}


def describe_shards(settings: Settings) -> str:
    """Which shards this process holds, in words, for the log line at start."""
    if not settings.shard_count:
        return "one connection for every guild (not sharded: SHARD_COUNT is 0)"
    held = settings.shard_id_list or range(settings.shard_count)
    numbers = ", ".join(str(shard) for shard in held)
    noun = "shard" if len(held) == 1 else "shards"
    return f"{noun} {numbers} of {settings.shard_count}"


def point_discord_py_at(settings: Settings) -> None:
    """Aim discord.py's REST routes and gateway at the configured URLs (Discord by default)."""
    discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def create_bot(settings: Settings, *, serve: bool = True) -> JamBot:
    point_discord_py_at(settings)
    # jambot never joins voice: don't warn at every start that voice libraries are missing
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    bot_class = ShardedJamBot if settings.shard_count else JamBot
    bot = bot_class(settings, serve=serve)
    if serve:
        log.info("gateway: this process holds %s", describe_shards(settings))
    return bot
