"""`jambot run` and `jambot sync`: start the bot or register its commands, failures as sentences.

Whatever stops either command ends as one line on stderr (`jambot: <sentence>`) naming what to
fix: the token, the setting that points at an unreachable host, the guild id. Third-party
exceptions (discord.py, aiohttp, sockets) are translated here, once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import aiohttp
import discord
import yarl
from discord import app_commands

from bot.chat.app import JamBot, create_bot
from bot.jobs.store import DatabaseInUseError, StoreError
from bot.music.errors import GenerationError
from bot.ops.server import MetricsServerError
from bot.settings import Settings

__all__ = [
    "StartFailure",
    "application_info",
    "check_gateway",
    "describe_failure",
    "explain_failure",
    "login",
    "run_bot",
    "sync_commands",
]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 8.0
REACH_TIMEOUT_SECONDS = 10.0
REST = ("Discord's REST API", "DISCORD_API_BASE_URL")
GATEWAY = ("Discord's gateway", "DISCORD_GATEWAY_URL")
REJECTED_TOKEN = "Discord rejected DISCORD_TOKEN: see .env.example."
# What discord.py raises when it can't open the gateway's websocket at all.
_CONNECT_ERRORS = (OSError, aiohttp.ClientError, TimeoutError, discord.GatewayNotFound)


class StartFailure(Exception):
    """Why the bot could not start or sync, as one sentence, and the exit status to end with."""

    def __init__(self, sentence: str, exit_code: int = 1) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.exit_code = exit_code


def run_bot(settings: Settings) -> int:
    """Serve /music until SIGINT or SIGTERM; the exit status says how it ended."""
    settings.require("DISCORD_TOKEN", "REPLICATE_API_TOKEN")
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    bot = create_bot(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with bot:
        runner = asyncio.create_task(_start(bot, settings))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("stopping: jobs in flight stay recorded and resume on the next start")
        try:
            await asyncio.wait_for(bot.close(), SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            log.warning("shutdown took longer than %.0fs; exiting anyway", SHUTDOWN_GRACE_SECONDS)
        stopper.cancel()
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            return explain_failure(runner.exception())
        runner.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)
    return 0


async def _start(bot: JamBot, settings: Settings) -> None:
    """`bot.start`, with the gateway tried first and each step's failures named.

    discord.py retries a gateway it can't reach without end, logging a traceback each time
    (and before its first connection it even ends in an AttributeError), so the gateway is
    tried before logging in, which opens the store and resumes jobs.
    """
    assert settings.discord_token is not None
    await check_gateway(settings.discord_gateway_url)
    await login(bot, settings.discord_token.get_secret_value())
    try:
        await bot.connect()
    except Exception as exc:
        cause = exc.__context__ if isinstance(exc, AttributeError) else exc
        if bot.ws is not None or not isinstance(cause, _CONNECT_ERRORS):
            raise  # not a failure to reach the gateway: explain_failure reads it as it is
        raise StartFailure(_unreachable(GATEWAY, cause)) from exc


async def check_gateway(url: str) -> None:
    """Open and close one websocket on the gateway, or raise a StartFailure saying why.

    Nothing is identified on it, so it uses none of the bot's daily session starts.
    """
    probe = yarl.URL(url).with_query(v=10, encoding="json")
    try:
        async with (
            asyncio.timeout(REACH_TIMEOUT_SECONDS),
            aiohttp.ClientSession() as session,
            session.ws_connect(probe) as websocket,
        ):
            await websocket.close()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StartFailure(_unreachable(GATEWAY, exc)) from exc


async def login(bot: JamBot, token: str) -> None:
    """`bot.login` (`GET /users/@me`): a rejected token stays a LoginFailure, which
    describe_failure words; an unreachable or wrong DISCORD_API_BASE_URL is a StartFailure."""
    try:
        await bot.login(token)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StartFailure(_unreachable(REST, exc)) from exc
    except discord.HTTPException as exc:  # a proxy's error page, a wrong path: not Discord
        raise StartFailure(
            f"Logging in through DISCORD_API_BASE_URL failed ({_http_detail(exc)}): check "
            "that setting."
        ) from exc


async def application_info(bot: JamBot, token: str) -> discord.AppInfo:
    """Log in, then fetch the application the token belongs to (`GET /oauth2/applications/@me`):
    `jambot check` shows whose bot it is and builds the invite URL from the application id."""
    await login(bot, token)
    try:
        return await bot.application_info()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StartFailure(_unreachable(REST, exc)) from exc


def sync_commands(settings: Settings, guild_id: int | None = None) -> int:
    """Register the slash commands once (guild: instant; global: up to an hour to appear)."""
    settings.require("DISCORD_TOKEN")
    return asyncio.run(_sync(settings, guild_id))


async def _sync(settings: Settings, guild_id: int | None) -> int:
    assert settings.discord_token is not None
    bot = create_bot(settings, serve=False)
    try:
        async with bot:
            await login(bot, settings.discord_token.get_secret_value())
            synced = await _register(bot, guild_id)
    except (StartFailure, discord.DiscordException) as exc:
        return explain_failure(exc)
    where = f"guild {guild_id}" if guild_id is not None else "all guilds (global)"
    print(f"Registered {len(synced)} commands in {where}: {', '.join(c.name for c in synced)}")
    return 0


async def _register(bot: JamBot, guild_id: int | None) -> list[app_commands.AppCommand]:
    guild = discord.Object(guild_id) if guild_id is not None else None
    if guild is not None:
        bot.tree.copy_global_to(guild=guild)
    try:
        return await bot.tree.sync(guild=guild)
    except discord.Forbidden as exc:
        if guild_id is None or exc.code != 50001:
            raise
        raise StartFailure(
            f"Discord won't let the bot register commands in guild {guild_id} (403 Missing "
            "Access): the bot isn't in that server or the id is wrong; invite the bot with the "
            "bot and applications.commands scopes, or check --guild."
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StartFailure(_unreachable(REST, exc)) from exc


def explain_failure(exc: BaseException | None) -> int:
    """Print why the bot stopped as one `jambot:` line; return the exit status."""
    sentence, code = describe_failure(exc)
    print(f"jambot: {sentence}", file=sys.stderr)
    return code


def describe_failure(exc: BaseException | None) -> tuple[str, int]:
    """Why the bot stopped, as one sentence naming what to fix, and the exit status."""
    if isinstance(exc, StartFailure):
        return exc.sentence, exc.exit_code
    if isinstance(exc, MetricsServerError):
        return exc.sentence, 1
    if isinstance(exc, discord.LoginFailure):
        return REJECTED_TOKEN, 2
    if isinstance(exc, discord.ConnectionClosed):
        if exc.code == 4004:  # "Authentication failed"
            return REJECTED_TOKEN, 2
        return f"Discord's gateway closed the connection (code {exc.code}).", 1
    if isinstance(exc, discord.GatewayNotFound):
        return _unreachable(GATEWAY, exc), 1
    if isinstance(exc, discord.HTTPException):
        return f"Discord refused a request ({_http_detail(exc)}).", 1
    if isinstance(exc, GenerationError):
        return exc.user_message, 1
    if isinstance(exc, DatabaseInUseError):
        return (
            "Another jambot is already running on the database at DATABASE_URL: stop it "
            "first, or give this one its own DATABASE_URL."
        ), 1
    if isinstance(exc, StoreError):
        return f"The job database at DATABASE_URL can't be used ({exc.detail}).", 1
    log.error("the bot stopped", exc_info=exc)  # a bug: the traceback is what fixes it
    return f"The bot stopped on an unexpected {type(exc).__name__}; see the log above.", 1


def _unreachable(service: tuple[str, str], exc: BaseException) -> str:
    what, setting = service
    return (
        f"Couldn't reach {what} at {setting} ({_reason(exc)}): check the network connection "
        "and that setting."
    )


def _reason(exc: BaseException) -> str:
    """What went wrong with a connection, in words, without the host (it is a setting's value)."""
    cause = getattr(exc, "os_error", exc)  # aiohttp keeps the socket's own error here
    if isinstance(cause, socket.gaierror):
        return "its host name doesn't resolve"
    if isinstance(cause, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(cause, TimeoutError):
        return f"no answer within {REACH_TIMEOUT_SECONDS:.0f} seconds"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"it answered {exc.status} instead of opening a websocket"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, discord.ConnectionClosed):
        return f"it closed the connection with code {exc.code}"
    if isinstance(exc, discord.GatewayNotFound):
        return "Discord found no gateway to connect to"
    return "the connection failed"


def _http_detail(exc: discord.HTTPException) -> str:
    status = f"{exc.status} {exc.response.reason or ''}".strip()
    if not exc.code:
        return status
    text = (exc.text or "").strip().splitlines()
    return f"{status}, code {exc.code}: {text[0][:120]}" if text else f"{status}, code {exc.code}"
