"""`jambot check`: the first-run doctor. One line per check, and a ✗ names the setting to fix.

Nothing it does costs money or changes what the bot has. Replicate is only read (the token's
account, the model version), never asked for a prediction. Discord is logged in to over REST,
and its gateway is opened and closed without identifying, so no daily session start is used.
The database is opened and migrated the way `jambot run` opens it, but without the process
lock, so checking beside a running bot works.

The Replicate adapter (and the bot and runner, which import it) are imported only once the
settings have parsed: the replicate package reads REPLICATE_* variables when it is imported,
and a malformed one must be reported as the settings line, first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.cli import ENV_FILE, load_settings, unusable_reason
from bot.jobs.migrate import MigrationError
from bot.jobs.store import JobStore, StoreError
from bot.logs import configure_logging
from bot.music import errors
from bot.settings import ConfigError, Settings

if TYPE_CHECKING:
    from bot.music.replicate import Account, Refused, VersionInfo

__all__ = ["INVITE_PERMISSIONS", "SCOPES", "invite_url", "permissions_value", "run_check"]

SCOPES = ("bot", "applications.commands")
# The channel permissions the bot asks for, and why. Replies to /music and to buttons go
# through the interaction and need none of them; they are for the channel posts the bot makes
# on its own (a track that arrives after the 15 minutes its reply can be edited).
INVITE_PERMISSIONS = {
    "view_channel": ("View Channel", "see the channel it posts a late track in"),
    "send_messages": ("Send Messages", "post that message, mentioning its requester"),
    "attach_files": ("Attach Files", "the track (and the card's waveform) are attached files"),
    "embed_links": ("Embed Links", "the card saying how the track was made is an embed"),
    "read_message_history": (
        "Read Message History",
        "read back its own earlier messages in the channel (hidden from it without this)",
    ),
}


@dataclass(frozen=True)
class Line:
    """One check's outcome, as printed: ``✓ what passed`` or ``✗ what to fix``."""

    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.text}"


@dataclass
class Report:
    """Every line after the settings one, and the application id once Discord has said it."""

    lines: list[Line] = field(default_factory=list)
    application_id: int | None = None


def run_check() -> int:
    """Run every check and print its line, then the invite URL. 0 when all pass, 1 when one
    fails, 2 when the settings don't parse (nothing else can be checked then)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(Line(False, str(exc)))
        return 2
    configure_logging(settings)
    if logging.getLogger().level > logging.DEBUG:  # the lines printed are the report
        logging.getLogger().setLevel(logging.WARNING)
    source = f"the environment and {ENV_FILE}" if ENV_FILE.is_file() else "the environment"
    report = asyncio.run(_check_all(settings))
    lines = [Line(True, f"Settings parse (read from {source})"), *report.lines]
    for line in lines:
        print(line)
    if report.application_id is not None:
        _print_invite(report.application_id)
    return _print_summary(lines)


def _print_summary(lines: list[Line]) -> int:
    failed = sum(not line.ok for line in lines)
    if failed:
        print(f"\n{failed} of {len(lines)} checks failed: fix what they name, then check again.")
        return 1
    jambot = _program()
    print(f"\nAll {len(lines)} checks passed. Once the bot is in your server, register its")
    print(f"commands with `{jambot} sync --guild <server id>`, then start it: `{jambot} run`.")
    return 0


def _program() -> str:
    """How this `jambot` was called (`.venv/bin/jambot`), so the next commands can be pasted."""
    called = Path(sys.argv[0])
    if called.name != "jambot":
        return "jambot"
    with contextlib.suppress(ValueError):
        return str(called.resolve().relative_to(Path.cwd()))
    return str(called)


async def _check_all(settings: Settings) -> Report:
    (discord_line, app_id), gateway_line, replicate_lines, store_line = await asyncio.gather(
        _discord(settings), _gateway(settings), _replicate(settings), _store(settings)
    )
    return Report([discord_line, gateway_line, *replicate_lines, store_line], app_id)


# -- Discord --------------------------------------------------------------------------------


async def _discord(settings: Settings) -> tuple[Line, int | None]:
    """The token's bot and its application, with the application id for the invite URL."""
    if (reason := unusable_reason(settings, "DISCORD_TOKEN")) is not None:
        return Line(False, reason), None
    from bot.chat.app import create_bot
    from bot.runner import StartFailure, application_info, describe_failure

    assert settings.discord_token is not None
    bot = create_bot(settings, serve=False)
    try:
        async with bot:
            app = await application_info(bot, settings.discord_token.get_secret_value())
            name = str(bot.user)
    except discord.LoginFailure as exc:
        rejected = f"Discord rejected DISCORD_TOKEN{_status(exc)}: fix DISCORD_TOKEN in .env."
        return Line(False, rejected), None
    except (StartFailure, discord.DiscordException) as exc:
        return Line(False, describe_failure(exc)[0]), None
    found = f"Discord accepted DISCORD_TOKEN: bot {name} of application {app.name} (id {app.id})"
    return Line(True, found), app.id


async def _gateway(settings: Settings) -> Line:
    from bot.runner import StartFailure, check_gateway

    try:
        await check_gateway(settings.discord_gateway_url)
    except StartFailure as exc:
        return Line(False, exc.sentence)
    return Line(True, "Discord's gateway answers at DISCORD_GATEWAY_URL")


def _status(exc: BaseException) -> str:
    """` (401 Unauthorized)`: what Discord answered to the login, when discord.py kept it."""
    cause = exc.__cause__
    if not isinstance(cause, discord.HTTPException):
        return ""
    said = f"{cause.status} {cause.response.reason or ''}".strip()
    return f" ({said})"


# -- Replicate ------------------------------------------------------------------------------


async def _replicate(settings: Settings) -> list[Line]:
    """The token's account, then the model version; each read is free."""
    if (reason := unusable_reason(settings, "REPLICATE_API_TOKEN")) is not None:
        return [Line(False, reason)]
    from bot.music.replicate import ReplicateBackend

    backend = ReplicateBackend.from_settings(settings)
    lines: list[Line] = []
    try:
        lines.append(_account_line(await backend.check_account()))
        if lines[-1].ok:
            lines.append(_model_line(settings.replicate_model, await backend.check_model()))
    except errors.GenerationError as exc:
        lines.append(Line(False, _replicate_failure(settings.replicate_model, exc)))
    finally:
        await backend.aclose()
    return lines


def _account_line(answer: Account | Refused) -> Line:
    from bot.music.replicate import Refused

    if not isinstance(answer, Refused):
        whose = f"account {answer.username} ({answer.type})"
        return Line(True, f"Replicate accepted REPLICATE_API_TOKEN: {whose}")
    said = f"{answer.status} {answer.title}"
    if answer.status in (401, 403):
        return Line(
            False,
            f"Replicate rejected REPLICATE_API_TOKEN ({said}): fix REPLICATE_API_TOKEN in .env.",
        )
    if answer.status == 429 or answer.status >= 500:
        return Line(False, f"Replicate answered {said} to GET /v1/account: try again in a minute.")
    return Line(
        False,
        f"REPLICATE_BASE_URL answered {said} to GET /v1/account: it must be Replicate's API "
        "host root (https://api.replicate.com); fix REPLICATE_BASE_URL in .env.",
    )


def _model_line(model: str, answer: VersionInfo | Refused) -> Line:
    from bot.music.replicate import Refused

    if not isinstance(answer, Refused):
        name, pinned, _ = model.partition(":")
        which = "version" if pinned else "latest version"
        created = f", created {answer.created_at[:10]}" if answer.created_at else ""
        return Line(True, f"REPLICATE_MODEL exists: {name}, {which} {answer.id[:12]}…{created}")
    said = f"{answer.status} {answer.title}"
    if answer.status in (404, 422):
        thing = "version" if ":" in model else "model"
        return Line(
            False, f"Replicate has no {thing} {model} ({said}): fix REPLICATE_MODEL in .env."
        )
    return Line(False, f"Replicate answered {said} about REPLICATE_MODEL {model}: try again later.")


def _replicate_failure(model: str, exc: errors.GenerationError) -> str:
    if isinstance(exc, errors.ModelNotFoundError):
        return f"Replicate's model {model} has no version yet: fix REPLICATE_MODEL in .env."
    if isinstance(exc, errors.UnexpectedResponseError):
        return (
            f"REPLICATE_BASE_URL didn't answer like Replicate's API ({exc.detail}): fix "
            "REPLICATE_BASE_URL in .env."
        )
    return (
        f"Couldn't reach Replicate at REPLICATE_BASE_URL ({exc.detail}): check the network "
        "connection and that setting."
    )


# -- the job database -----------------------------------------------------------------------


async def _store(settings: Settings) -> Line:
    """Open and migrate the database as `jambot run` does, minus the lock a running bot holds."""
    try:
        store = await JobStore.open(settings.database_url)
        try:
            version = await store.schema_version()
        finally:
            await store.close()
    except (StoreError, MigrationError, OSError) as exc:
        detail = exc.detail if isinstance(exc, StoreError) else str(exc)
        return Line(
            False,
            f"The job database at DATABASE_URL can't be used ({detail}): fix DATABASE_URL in .env.",
        )
    return Line(
        True,
        f"The job database {settings.database_label} opens and is migrated "
        f"(schema version {version})",
    )


# -- the invite URL -------------------------------------------------------------------------


def permissions_value() -> int:
    """The permission bit set of INVITE_PERMISSIONS, as the invite URL's `permissions=`."""
    return discord.Permissions(**dict.fromkeys(INVITE_PERMISSIONS, True)).value


def invite_url(application_id: int) -> str:
    permissions = discord.Permissions(permissions_value())
    return discord.utils.oauth_url(application_id, permissions=permissions, scopes=SCOPES)


def _print_invite(application_id: int) -> None:
    scopes = " and ".join(SCOPES)
    print(f"\nInvite the bot (scopes {scopes}; permissions {permissions_value()}, the sum of):")
    print(f"  {invite_url(application_id)}")
    width = max(len(name) for name, _ in INVITE_PERMISSIONS.values())
    for flag, (name, why) in INVITE_PERMISSIONS.items():
        bit = getattr(discord.Permissions, flag).flag
        print(f"  {name:<{width}} {bit:>6}  {why}")
    print(
        "  (Replies to /music and to buttons need none of these; they are for the tracks it\n"
        "  posts in the channel itself, after the 15 minutes a reply can be edited.)"
    )
