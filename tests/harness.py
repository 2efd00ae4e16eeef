"""Runs the real bot (the factory `jambot run` uses) against the two loopback fakes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from pydantic import SecretStr

from bot.chat.app import JamBot, create_bot
from bot.jobs.store import Job
from bot.settings import Settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction, RestCall
from tests.fakes.replicate import FakeReplicate

REPO_ROOT = Path(__file__).resolve().parents[1]
OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}


def bot_settings(
    discord: FakeDiscord, replicate: FakeReplicate, database: Path, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "discord_token": SecretStr(discord.bot_token),
        "replicate_api_token": SecretStr(replicate.token),
        "replicate_base_url": replicate.base_url,
        "replicate_model": f"{replicate.model}:{replicate.version}",
        "replicate_poll_interval": 0.05,
        "discord_api_base_url": discord.api_base_url,
        "discord_gateway_url": discord.gateway_url,
        "database_url": f"sqlite:///{database}",
        "user_cooldown_seconds": 0,
        "daily_quota_per_user": 0,
        "max_queued_per_user": 50,
        "max_concurrent_generations": 4,
        "retry_base_delay_seconds": 0.01,
        "generation_timeout_seconds": 30,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningBot:
    bot: JamBot
    task: asyncio.Task[None]

    async def stop(self) -> None:
        await self.bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_bot(settings: Settings, discord: FakeDiscord) -> RunningBot:
    bot = create_bot(settings)
    assert settings.discord_token is not None
    task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
    await discord.wait_ready()
    await asyncio.wait_for(bot.wait_until_ready(), 10)
    return RunningBot(bot, task)


@dataclass
class Harness:
    discord: FakeDiscord
    replicate: FakeReplicate
    settings: Settings
    running: RunningBot
    extra: list[RunningBot] = field(default_factory=list)

    @property
    def bot(self) -> JamBot:
        return self.running.bot

    async def music(self, *, user_id: int | None = None, **options: Any) -> FakeInteraction:
        return await self.discord.send_interaction("music", to_options(options), user_id=user_id)

    async def final_reply(self, interaction: FakeInteraction, timeout: float = 20) -> RestCall:
        """The edit of the original reply that ends the job: a file or a ⚠️ sentence."""
        return await self.discord.wait_for_call(
            lambda call: is_final_edit(call, interaction), timeout
        )

    async def job_for(
        self, interaction: FakeInteraction, timeout: float = 10, *, terminal: bool = True
    ) -> Job:
        """The interaction's job, once it has ended (or at once with terminal=False)."""
        return await wait_for(lambda: self._job(interaction, terminal), timeout)

    async def _job(self, interaction: FakeInteraction, terminal: bool) -> Job | None:
        for job in await self.bot.services.store.recent_for_user(interaction.user_id, limit=1000):
            if job.interaction_id == interaction.id and (job.is_terminal or not terminal):
                return job
        return None


def to_options(options: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "type": OPTION_TYPES[type(value)], "value": value}
        for name, value in options.items()
    ]


def is_final_edit(call: RestCall, interaction: FakeInteraction) -> bool:
    if call.method != "PATCH" or f"/{interaction.token}/messages/" not in call.path:
        return False
    body = call.json or {}
    return bool(call.files) or str(body.get("content") or "").startswith("⚠️")


def audio_seconds(data: bytes) -> float:
    return float(sf.info(io.BytesIO(data)).duration)


async def wait_for(probe: Callable[[], Any], timeout: float = 10, interval: float = 0.02) -> Any:
    """Await `probe()` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def fakes() -> AsyncIterator[tuple[FakeDiscord, FakeReplicate]]:
    """Both fakes; afterwards, every body the bot sent must have matched Discord's OpenAPI."""
    async with FakeDiscord() as discord, FakeReplicate(start_seconds=0.05, run_seconds=0.3) as rep:
        yield discord, rep
        assert discord.violations == [], discord.violations


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    async with fakes() as (discord, rep):
        settings = bot_settings(discord, rep, tmp_path / "jambot.db", **overrides)
        running = await start_bot(settings, discord)
        h = Harness(discord, rep, settings, running)
        try:
            yield h
        finally:
            for other in h.extra:
                await other.stop()
            await h.running.stop()


def bot_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that make `jambot run` use these settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in Settings.model_fields and key.lower() not in Settings.model_fields
    }
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[name.upper()] = str(value)
    return env


async def run_until_it_stops(
    settings: Settings, cwd: Path, timeout: float = 60
) -> tuple[int, str, str]:
    """`jambot run` in a child process that is expected to stop by itself (a start that
    fails): its exit status, standard output and standard error."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=cwd,
        env=bot_environment(settings) | {"PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout)
    assert child.returncode is not None
    return child.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass
class BotProcess:
    """`jambot run` in a child process: the real entry point, killable without any cleanup."""

    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.process.wait()


async def spawn_bot(
    settings: Settings,
    discord: FakeDiscord,
    workdir: Path,
    *,
    module: str = "bot",
    extra_env: dict[str, str] | None = None,
) -> BotProcess:
    """`python -m <module> run` in a child process, returned once it is on the gateway."""
    sessions = len(discord.gateway_sessions)
    log_path = workdir / f"bot-{sessions}.log"
    env = bot_environment(settings) | {"PYTHONPATH": str(REPO_ROOT)} | (extra_env or {})
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "run",
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    child = BotProcess(process, log_path)
    try:
        await wait_for(lambda: len(discord.gateway_sessions) > sessions, 20)
    except TimeoutError:
        await child.kill()
        raise AssertionError(f"the bot did not connect:\n{child.log}") from None
    return child
