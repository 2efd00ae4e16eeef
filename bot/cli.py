"""The `jambot` command: run the bot, sync its commands, check the set-up, make a track, or
copy a SQLite job store to PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import dotenv_values
from pydantic import SecretStr, ValidationError

from bot.logs import configure_logging
from bot.music.backend import Progress, Track
from bot.music.errors import GenerationError, InvalidRequestError
from bot.music.request import AudioFormat, ModelVersion, MusicRequest, Normalization
from bot.naming import track_filename
from bot.settings import ConfigError, Settings, describe_setting_error, redact_database_url

if TYPE_CHECKING:
    from bot.jobs.copy import CopyReport
    from bot.jobs.store import JobStore

log = logging.getLogger(__name__)

MAX_LOCAL_AUDIO_BYTES = 5 * 1024 * 1024
AUDIO_MIME_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}
ENV_FILE = Path(".env")  # where Settings reads it: the working directory
TOKEN_NOUNS = {"DISCORD_TOKEN": "your bot token", "REPLICATE_API_TOKEN": "your Replicate API token"}
# What a token still left as a template reads like: `<your token>`, `your-token-here`, `xxx`.
_PLACEHOLDER = re.compile(
    r"^(?:<.*>|your[-_ ].*|.*[-_ ]here|x{3,}|\.{3}|changeme|change[-_ ]me|replace[-_ ]?me|todo)$",
    re.IGNORECASE,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; whatever stops it ends as one `jambot:` line and an exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            from bot.ops.check import run_check  # discord.py and replicate: only when checking

            return run_check()
        settings = load_settings()
        configure_logging(settings)
        require(settings, *args.needs)
        result: int = args.handler(args, settings)
        return result
    except ConfigError as exc:
        print(f"jambot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: its traceback goes through the scrubbed log handler
        log.error("jambot stopped", exc_info=exc)
        print(f"jambot: stopped on an unexpected {type(exc).__name__}.", file=sys.stderr)
        return 1


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning any validation failure into a one-line ConfigError.

    The message names the variable and never repeats its value (it could be a secret).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_setting_error(exc.errors()[0])) from None


def require(settings: Settings, *names: str) -> None:
    """Stop with a ConfigError naming the first of `names` that still can't be used."""
    for name in names:
        if (reason := unusable_reason(settings, name)) is not None:
            raise ConfigError(reason)


def unusable_reason(settings: Settings, name: str, env_file: Path = ENV_FILE) -> str | None:
    """Why the setting `name` can't be used yet, in the words a newcomer needs; None if it can.

    "Copy .env.example" is the wrong advice to someone who already did and left a token empty
    or as a template, so the sentence depends on where the value came from.
    """
    value = getattr(settings, name.lower())
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")
    if text.strip() and not _PLACEHOLDER.match(text.strip()):
        return None
    state = "a placeholder" if text.strip() else "empty"
    what = TOKEN_NOUNS.get(name, "its value")
    if any(key.upper() == name for key in os.environ):
        return f"{name} is {state} in the environment, which wins over .env: set it to {what}."
    if not env_file.is_file():
        return f"{name} is not set: copy .env.example to .env and fill it in."
    if not any(key.upper() == name for key in dotenv_values(env_file)):
        return f".env exists but has no {name} line: add {name}= with {what} (see .env.example)."
    return f".env exists but {name} is still {state}: paste {what} there (see .env.example)."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jambot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="connect to Discord and serve /music")
    run.set_defaults(handler=_run, needs=("DISCORD_TOKEN", "REPLICATE_API_TOKEN"))

    commands.add_parser(
        "check", help="check the tokens, the model and the database; print the invite URL"
    )

    sync = commands.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument(
        "--guild", type=int, help="register in one guild (instant) instead of globally"
    )
    sync.set_defaults(handler=_sync, needs=("DISCORD_TOKEN",))

    gen = commands.add_parser("generate", help="make one track in the terminal")
    gen.add_argument("prompt", help="what the music should sound like")
    gen.add_argument("--duration", type=int, default=8, help="length in seconds")
    gen.add_argument("--model", choices=[m.value for m in ModelVersion], default="stereo-large")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=250)
    gen.add_argument("--top-p", type=float, default=0.0)
    gen.add_argument("--guidance", type=int, default=3, help="classifier-free guidance")
    gen.add_argument("--output-format", choices=[f.value for f in AudioFormat], default="wav")
    gen.add_argument("--normalization", choices=[n.value for n in Normalization])
    gen.add_argument("--seed", type=int, help="fix the seed to reproduce a track")
    gen.add_argument("--audio", help="melody to follow or clip to continue: a file or a URL")
    gen.add_argument("--continuation", action="store_true", help="continue --audio")
    gen.add_argument("--out", type=Path, help="where to write the track (default: from prompt)")
    gen.set_defaults(handler=_generate, needs=("REPLICATE_API_TOKEN",))

    copy = commands.add_parser(
        "copy-store", help="copy a SQLite job store's jobs and server settings to PostgreSQL"
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="an empty database: postgresql://user:pw@host/db"
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="the SQLite file, sqlite:///path/to/jambot.db (default: DATABASE_URL)",
    )
    copy.set_defaults(handler=_copy_store, needs=())
    return parser


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import run_bot

    return run_bot(settings)


def _sync(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import sync_commands

    return sync_commands(settings, guild_id=args.guild)


class _CopyFailure(Exception):
    """Why `copy-store` copied nothing, as one sentence."""


def _copy_store(args: argparse.Namespace, settings: Settings) -> int:
    if args.source is not None:
        if not args.source.startswith("sqlite:///"):
            raise ConfigError("--from must look like sqlite:///path/to/jambot.db.")
        source, source_name = Path(args.source.removeprefix("sqlite:///")), "--from"
    elif settings.uses_postgres:
        raise ConfigError(
            "DATABASE_URL names a PostgreSQL server: give the SQLite file to copy with "
            "--from sqlite:///path/to/jambot.db."
        )
    else:
        source, source_name = Path(settings.database_path), "DATABASE_URL"
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to must look like postgresql://user:password@host:5432/db.")
    try:
        if not source.is_file():
            raise _CopyFailure(f"There is no SQLite file at {source} to copy: check {source_name}.")
        report = asyncio.run(_copy(source, source_name, args.to))
    except _CopyFailure as exc:
        print(f"jambot: {exc}", file=sys.stderr)
        return 1
    print(
        f"Copied {report.jobs} jobs ({report.queued} queued, {report.running} running) and "
        f"{report.guild_settings} server settings from {source} to "
        f"{redact_database_url(args.to)}; start jambot with DATABASE_URL set to it."
    )
    return 0


async def _copy(source: Path, source_name: str, target_url: str) -> CopyReport:
    """Copy the SQLite file at `source` (named by the setting or flag `source_name`) into the
    empty PostgreSQL database at `target_url`, or raise a _CopyFailure saying why not."""
    from bot.jobs.copy import TargetNotEmptyError, bot_lock, copy_store
    from bot.jobs.store import DatabaseInUseError, StoreError

    async with contextlib.AsyncExitStack() as stack:
        try:
            stack.enter_context(bot_lock(source))
        except DatabaseInUseError as exc:
            raise _CopyFailure(
                f"A jambot is running on {source}: stop the bot first, then copy its jobs."
            ) from exc
        except OSError as exc:
            raise _CopyFailure(
                f"Couldn't lock {source} against a bot starting on it ({exc.strerror or exc})."
            ) from exc
        old = await _opened(stack, source, f"SQLite file at {source_name}")
        new = await _opened(stack, target_url, "PostgreSQL database at --to")
        try:
            return await copy_store(old, new)
        except TargetNotEmptyError as exc:
            raise _CopyFailure(
                f"The database at --to ({redact_database_url(target_url)}) already holds "
                f"{exc.jobs} jobs and {exc.guild_settings} server settings: copy-store only "
                "copies into an empty database, so it copied nothing."
            ) from exc
        except StoreError as exc:
            raise _CopyFailure(f"The copy failed and copied nothing ({exc.detail}).") from exc


async def _opened(stack: contextlib.AsyncExitStack, target: str | Path, what: str) -> JobStore:
    """The store at `target`, closed with `stack`; else a _CopyFailure naming `what`."""
    from bot.jobs.migrate import MigrationError
    from bot.jobs.store import JobStore, StoreError

    try:
        store = await JobStore.open(target)
    except (StoreError, MigrationError) as exc:
        raise _CopyFailure(f"The {what} can't be used ({_store_detail(exc)}).") from exc
    return await stack.enter_async_context(store)


def _store_detail(exc: Exception) -> str:
    from bot.jobs.store import StoreError

    return (exc.detail if isinstance(exc, StoreError) else str(exc)).rstrip(".")


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request = _request(args, settings)
        _check_out(args.out)
    except InvalidRequestError as exc:
        print(f"jambot: {exc.user_message}", file=sys.stderr)
        return 2
    try:
        track = asyncio.run(_make(settings, request))
    except GenerationError as exc:
        _clear_line()
        print(f"jambot: {exc.user_message}", file=sys.stderr)
        log.debug("generation failed: %s", exc.detail)
        return 1
    _clear_line()
    return _save(track, args.out or Path(track_filename(request.prompt, track.seed, track.format)))


def _request(args: argparse.Namespace, settings: Settings) -> MusicRequest:
    return MusicRequest.from_options(
        args.prompt,
        duration=args.duration,
        model=args.model,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance=args.guidance,
        output_format=args.output_format,
        normalization=args.normalization,
        seed=args.seed,
        input_audio=_audio_input(args.audio) if args.audio else None,
        continuation=args.continuation,
        max_duration=settings.max_duration_seconds,
    )


def _audio_input(value: str) -> str:
    """A URL is passed through; a local file becomes a data URI (Replicate accepts both).

    The file must decode as audio: anything else would be sent, billed, and then fail.
    """
    if value.startswith(("http://", "https://")):
        return value
    path = Path(value)
    if not path.is_file():
        raise InvalidRequestError(f"--audio: no such file: {value}.")
    if path.stat().st_size > MAX_LOCAL_AUDIO_BYTES:
        raise InvalidRequestError("--audio: the file must be at most 5 MB.")
    data = path.read_bytes()
    mime = _audio_mime(data, value)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _audio_mime(data: bytes, name: str) -> str:
    from bot.music.audio import AudioError, probe  # numpy and libsndfile: only when needed

    try:
        found = probe(data).format
    except AudioError:
        raise InvalidRequestError(
            f"--audio: {name} isn't an audio file jambot can read (WAV, MP3, FLAC or Ogg)."
        ) from None
    return AUDIO_MIME_TYPES.get(found, f"audio/{found}")


def _check_out(out: Path | None) -> None:
    """Refuse, before anything is paid for, a destination the track could not be written to."""
    folder = out.parent if out is not None else Path.cwd()
    if out is not None and out.is_dir():
        raise InvalidRequestError(f"--out: {out} is a folder; give a file name inside it.")
    if not folder.is_dir():
        problem = "isn't a folder" if folder.exists() else "doesn't exist"
        raise InvalidRequestError(f"--out: {folder} {problem}.")
    if out is not None and out.exists() and not os.access(out, os.W_OK):
        raise InvalidRequestError(f"--out: {out} can't be overwritten (no permission).")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        if out is None:
            raise InvalidRequestError(
                f"The current folder {folder} isn't writable: give --out a path you can write to."
            ) from None
        raise InvalidRequestError(f"--out: the folder {folder} isn't writable.") from None


def _save(track: Track, out: Path) -> int:
    """Write the paid-for track to `out`, or, if that fails after all, anywhere it can go."""
    try:
        out.write_bytes(track.data)
    except OSError as exc:
        saved = _save_elsewhere(track.data, out.name)
        reason = exc.strerror or type(exc).__name__
        if saved is None:
            print(f"jambot: couldn't write {out} ({reason}), nor a copy anywhere.", file=sys.stderr)
            print(f"The track stays downloadable for an hour at {track.output_url}")
            return 1
        print(f"jambot: couldn't write {out} ({reason}); saved it as {saved}.", file=sys.stderr)
        _report(track, saved)
        return 1
    _report(track, out)
    return 0


def _save_elsewhere(data: bytes, name: str) -> Path | None:
    """A fresh file named after `name` in the current folder, else in the temp folder."""
    stem, suffix = Path(name).stem or "track", Path(name).suffix
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            handle, path = tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix, dir=folder)
        except OSError:
            continue
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
        except OSError:
            Path(path).unlink(missing_ok=True)
            continue
        return Path(path)
    return None


def _report(track: Track, path: Path) -> None:
    seed = track.seed if track.seed is not None else "unknown"
    print(f"Wrote {path} ({len(track.data):,} bytes, {track.format}); seed {seed}")


async def _make(settings: Settings, request: MusicRequest) -> Track:
    # Imported here: the replicate package reads REPLICATE_* variables at import time, and
    # a malformed one must be reported by our settings first, as one line.
    from bot.music.replicate import ReplicateBackend

    backend = ReplicateBackend.from_settings(settings)
    try:
        return await backend.generate(request, on_progress=_show_progress)
    finally:
        await backend.aclose()


async def _show_progress(progress: Progress) -> None:
    """Redraw one bar in a terminal; in a pipe or a log file the redraws would be noise."""
    if not sys.stderr.isatty():
        return
    width = 30
    percent = progress.percent or 0.0
    filled = int(width * percent / 100)
    bar = "#" * filled + "-" * (width - filled)
    eta = f", about {progress.eta:.0f}s left" if progress.eta is not None else ""
    line = f"\r[{bar}] {percent:5.1f}% {progress.status} {progress.elapsed:5.1f}s{eta}"
    sys.stderr.write(line.ljust(79))
    sys.stderr.flush()


def _clear_line() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 79 + "\r")
