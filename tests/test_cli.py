"""The `jambot` command line, run as a real child process against the Replicate fake."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.fakes.discord import FakeDiscord
from tests.fakes.replicate import FakeReplicate, HttpFault
from tests.harness import REPO_ROOT


async def jambot(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": str(cwd)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=base | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def fake_env(fake: FakeReplicate, **extra: str) -> dict[str, str]:
    return {
        "REPLICATE_BASE_URL": fake.base_url,
        "REPLICATE_API_TOKEN": fake.token,
        "REPLICATE_POLL_INTERVAL": "0.05",
        "RETRY_BASE_DELAY_SECONDS": "0.01",
        **extra,
    }


async def test_generate_writes_a_track_of_the_requested_length(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    code, out, err = await jambot(
        "generate",
        "warm lofi beat",
        "--duration",
        "8",
        "--seed",
        "42",
        "--out",
        "track.wav",
        cwd=tmp_path,
        env=fake_env(replicate_fake),
    )
    assert code == 0, err
    assert "track.wav" in out and "seed 42" in out
    info = sf.info(str(tmp_path / "track.wav"))
    assert info.duration == pytest.approx(8, abs=0.01) and info.channels == 2
    assert replicate_fake.creates[0].body["input"]["seed"] == 42


async def test_generate_flags_reach_replicate(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    clip = tmp_path / "riff.wav"
    sf.write(str(clip), [[0.0, 0.0]] * 3200, 32000)
    code, out, err = await jambot(
        "generate",
        "jazz trio",
        "--duration",
        "2",
        "--model",
        "melody-large",
        "--temperature",
        "0.7",
        "--top-k",
        "100",
        "--top-p",
        "0.9",
        "--guidance",
        "5",
        "--output-format",
        "mp3",
        "--normalization",
        "rms",
        "--audio",
        str(clip),
        "--continuation",
        cwd=tmp_path,
        env=fake_env(replicate_fake),
    )
    assert code == 0, err
    sent = replicate_fake.creates[0].body["input"]
    assert sent["input_audio"].startswith("data:audio/")
    del sent["input_audio"]
    assert sent == {
        "prompt": "jazz trio",
        "model_version": "melody-large",
        "duration": 2,
        "temperature": 0.7,
        "top_k": 100,
        "top_p": 0.9,
        "classifier_free_guidance": 5,
        "output_format": "mp3",
        "normalization_strategy": "rms",
        "continuation": True,
        "continuation_start": 0,
    }
    written = [p for p in tmp_path.iterdir() if p.suffix == ".mp3"]
    assert [p.name for p in written] == [out.split()[1]]


async def test_generate_failure_prints_the_sentence_and_exits_non_zero(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    replicate_fake.fail_creates(HttpFault.unauthenticated())
    code, out, err = await jambot("generate", "x", cwd=tmp_path, env=fake_env(replicate_fake))
    assert code == 1
    assert "Replicate rejected the bot's API token" in err
    assert replicate_fake.token not in err + out


async def test_invalid_request_costs_nothing(replicate_fake: FakeReplicate, tmp_path: Path) -> None:
    code, _, err = await jambot(
        "generate", "x", "--duration", "99", cwd=tmp_path, env=fake_env(replicate_fake)
    )
    assert code == 2
    assert "duration must be between 1 and 30 seconds." in err
    assert replicate_fake.creates == []


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "jambot: REPLICATE_API_TOKEN is not set: copy .env.example to .env and fill it in."),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "REPLICATE_POLL_INTERVAL": "soon"},
            "jambot: REPLICATE_POLL_INTERVAL is invalid",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "MAX_ATTEMPTS": "0"},
            "jambot: MAX_ATTEMPTS is invalid",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "DATABASE_URL": "postgres://db"},
            "jambot: DATABASE_URL is invalid",
        ),
    ],
)
async def test_bad_settings_stop_with_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    code, _out, err = await jambot("generate", "x", cwd=tmp_path, env=env)
    assert code == 2
    assert err.startswith(line) and err.count("\n") == 1, err
    assert "Traceback" not in err and ".env.example" in err
    assert "r8_x" not in err


async def test_run_without_discord_token_names_it(tmp_path: Path) -> None:
    code, _, err = await jambot("run", cwd=tmp_path, env={"REPLICATE_API_TOKEN": "r8_x"})
    assert code == 2 and err.startswith("jambot: DISCORD_TOKEN is not set")


async def test_settings_come_from_a_dot_env_file(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    lines = [f"{k}={v}" for k, v in fake_env(replicate_fake).items()]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    code, _out, err = await jambot(
        "generate", "from dotenv", "--duration", "1", cwd=tmp_path, env={}
    )
    assert code == 0, err
    assert len(replicate_fake.creates) == 1


@pytest.mark.parametrize("guild", [True, False])
async def test_sync_registers_the_commands(tmp_path: Path, guild: bool) -> None:
    async with FakeDiscord() as discord:
        env = {"DISCORD_TOKEN": discord.bot_token, "DISCORD_API_BASE_URL": discord.api_base_url}
        args = ["sync", "--guild", str(discord.guild_id)] if guild else ["sync"]
        code, out, err = await jambot(*args, cwd=tmp_path, env=env)
        assert code == 0, err
        assert "Registered 2 commands" in out
        puts = [c for c in discord.calls if c.method == "PUT"]
        scope = f"/guilds/{discord.guild_id}/commands" if guild else "/commands"
        assert len(puts) == 1 and puts[0].path.endswith(scope)
        assert discord.violations == []
        commands = {c["name"]: c for c in discord.commands}
        assert set(commands) == {"music", "jam"}
        music = {o["name"]: o for o in commands["music"]["options"]}
        assert list(music) == [
            "prompt", "duration", "model", "temperature", "top_k", "top_p", "guidance",
            "output_format", "normalization", "seed", "audio", "continuation",
        ]  # fmt: skip
        assert music["prompt"]["required"] and music["prompt"]["max_length"] == 1000
        assert (music["duration"]["min_value"], music["duration"]["max_value"]) == (1, 30)
        assert [c["value"] for c in music["model"]["choices"]] == [
            "stereo-melody-large", "stereo-large", "melody-large", "large",
        ]  # fmt: skip
        assert [c["value"] for c in music["output_format"]["choices"]] == ["wav", "mp3"]
        assert music["audio"]["type"] == 11 and music["continuation"]["type"] == 5
        assert all(1 <= len(o["description"]) <= 100 for o in music.values())
        subcommands = {o["name"] for o in commands["jam"]["options"]}
        assert subcommands == {"history", "queue", "quota", "cancel"}


async def test_sync_with_a_rejected_token_says_so(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        env = {"DISCORD_TOKEN": "wrong", "DISCORD_API_BASE_URL": discord.api_base_url}
        code, _out, err = await jambot("sync", cwd=tmp_path, env=env)
        assert code == 2
        assert err.strip().splitlines()[-1] == (
            "jambot: Discord rejected DISCORD_TOKEN: see .env.example."
        )
        assert "wrong" not in err


async def test_run_with_a_rejected_token_says_so(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        env = {
            "DISCORD_TOKEN": "wrong",
            "REPLICATE_API_TOKEN": "r8_x",
            "DISCORD_API_BASE_URL": discord.api_base_url,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        }
        code, _out, err = await jambot("run", cwd=tmp_path, env=env)
        assert code == 2, err
        assert err.strip().splitlines()[-1] == (
            "jambot: Discord rejected DISCORD_TOKEN: see .env.example."
        )
        assert "wrong" not in err and "r8_x" not in err
