"""The `jambot` command line, run as a real child process against the Replicate fake."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import discord as discord_py
import numpy as np
import pytest
import soundfile as sf

from bot.runner import explain_failure
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
            "jambot: REPLICATE_POLL_INTERVAL must be a number greater than 0 and at most 30: ",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "MAX_ATTEMPTS": "0"},
            "jambot: MAX_ATTEMPTS must be a whole number between 1 and 10: ",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "DATABASE_URL": "mysql://jam:pw@db/jambot"},
            "jambot: DATABASE_URL must look like sqlite:///path/to/jambot.db or"
            " postgresql://user:password@host:5432/db: ",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "USER_COOLDOWN_SECONDS": "inf"},
            "jambot: USER_COOLDOWN_SECONDS must be a number between 0 and 86400: ",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x", "REPLICATE_MODEL": "meta/musicgen:r8_x"},
            "jambot: REPLICATE_MODEL must look like owner/name or owner/name:<64-hex version id>",
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
        assert "Registered 3 commands" in out
        puts = [c for c in discord.calls if c.method == "PUT"]
        scope = f"/guilds/{discord.guild_id}/commands" if guild else "/commands"
        assert len(puts) == 1 and puts[0].path.endswith(scope)
        assert discord.violations == []
        commands = {c["name"]: c for c in discord.commands}
        assert set(commands) == {"music", "jam", "jamadmin"}
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
        assert commands["jam"].get("default_member_permissions") is None  # everyone
        admin = commands["jamadmin"]
        assert int(admin["default_member_permissions"]) == 1 << 5  # Manage Server
        assert {o["name"] for o in admin["options"]} == {"config", "stats"}
        config = {o["name"]: o for o in admin["options"] if o["name"] == "config"}["config"]
        assert [o["name"] for o in config["options"]] == [
            "daily_budget", "daily_quota", "cooldown", "max_duration", "models", "block",
            "unblock", "reset",
        ]  # fmt: skip


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


def one_line(err: str) -> str:
    """The whole of stderr, which must be a single `jambot:` sentence and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("jambot: ") and lines[0].endswith("."), err
    return lines[0]


def closed_port_url(scheme: str, path: str = "") -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}{path}"


# --audio and --out are checked before anything is paid for ---------------------------------


async def test_audio_that_is_not_audio_costs_nothing(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    code, _, err = await jambot(
        "generate", "x", "--model", "melody-large", "--audio", str(text),
        cwd=tmp_path, env=fake_env(replicate_fake),
    )  # fmt: skip
    assert code == 2
    assert one_line(err) == (
        f"jambot: --audio: {text} isn't an audio file jambot can read (WAV, MP3, FLAC or Ogg)."
    )
    assert replicate_fake.creates == []


async def test_audio_over_5_mb_costs_nothing(replicate_fake: FakeReplicate, tmp_path: Path) -> None:
    big = tmp_path / "long.wav"
    sf.write(str(big), np.zeros((32000 * 45, 2)), 32000)  # 45 s of 16-bit stereo: 5.8 MB
    code, _, err = await jambot(
        "generate", "x", "--model", "melody-large", "--audio", str(big),
        cwd=tmp_path, env=fake_env(replicate_fake),
    )  # fmt: skip
    assert code == 2
    assert one_line(err) == "jambot: --audio: the file must be at most 5 MB."
    assert replicate_fake.creates == []


async def test_audio_mime_type_follows_the_content(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    clip = tmp_path / "riff.bin"  # the name says nothing; the bytes are FLAC
    sf.write(str(clip), [[0.0, 0.0]] * 3200, 32000, format="FLAC")
    code, _, err = await jambot(
        "generate", "x", "--model", "melody-large", "--audio", str(clip), "--out", "t.wav",
        cwd=tmp_path, env=fake_env(replicate_fake),
    )  # fmt: skip
    assert code == 0, err
    assert replicate_fake.creates[0].body["input"]["input_audio"].startswith("data:audio/flac;")


@pytest.mark.parametrize(
    ("out", "sentence"),
    [
        ("/no/such/dir/x.wav", "jambot: --out: /no/such/dir doesn't exist."),
        (".", "jambot: --out: . is a folder; give a file name inside it."),
        ("notes.txt/x.wav", "jambot: --out: notes.txt isn't a folder."),
    ],
)
async def test_an_unwritable_out_is_refused_before_paying(
    replicate_fake: FakeReplicate, tmp_path: Path, out: str, sentence: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    code, _, err = await jambot(
        "generate", "x", "--out", out, cwd=tmp_path, env=fake_env(replicate_fake)
    )
    assert code == 2
    assert one_line(err) == sentence
    assert replicate_fake.creates == []


async def test_a_track_that_cannot_be_written_where_asked_is_saved_anyway(
    replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    replicate_fake.run_seconds = None  # held processing until finish()
    args = ["generate", "kept", "--seed", "3", "--duration", "1", "--out", str(folder / "x.wav")]
    child = asyncio.create_task(jambot(*args, cwd=tmp_path, env=fake_env(replicate_fake)))
    prediction = await replicate_fake.wait_for_prediction(timeout=20)
    shutil.rmtree(folder)  # the folder vanishes while the paid-for track is being made
    replicate_fake.finish(prediction.id)
    code, out, err = await child
    assert code == 1
    saved = tmp_path / out.split()[1]
    assert one_line(err) == (
        f"jambot: couldn't write {folder / 'x.wav'} (No such file or directory); "
        f"saved it as {saved}."
    )
    assert saved.parent == tmp_path and saved.name.startswith("x-") and saved.suffix == ".wav"
    assert sf.info(str(saved)).duration == pytest.approx(1, abs=0.01)
    assert len(replicate_fake.creates) == 1


# Discord failures of `sync` and `run` are one sentence naming what to fix ------------------


async def test_sync_to_a_guild_the_bot_is_not_in_says_so(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        env = {"DISCORD_TOKEN": discord.bot_token, "DISCORD_API_BASE_URL": discord.api_base_url}
        code, _out, err = await jambot("sync", "--guild", "123456789", cwd=tmp_path, env=env)
    assert code == 1
    assert one_line(err) == (
        "jambot: Discord won't let the bot register commands in guild 123456789 (403 Missing "
        "Access): the bot isn't in that server or the id is wrong; invite the bot with the bot "
        "and applications.commands scopes, or check --guild."
    )


async def test_sync_refused_by_discord_gives_status_and_code(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        discord.fail_next(
            "PUT", r"/commands$", 400, {"message": "Invalid Form Body", "code": 50035}
        )
        env = {"DISCORD_TOKEN": discord.bot_token, "DISCORD_API_BASE_URL": discord.api_base_url}
        code, _out, err = await jambot("sync", cwd=tmp_path, env=env)
    assert code == 1
    assert one_line(err) == (
        "jambot: Discord refused a request (400 Bad Request, code 50035: Invalid Form Body)."
    )


async def test_sync_with_discord_unreachable_names_the_setting(tmp_path: Path) -> None:
    env = {"DISCORD_TOKEN": "t0ken", "DISCORD_API_BASE_URL": closed_port_url("http", "/api/v10")}
    code, _out, err = await jambot("sync", cwd=tmp_path, env=env)
    assert code == 1
    assert one_line(err) == (
        "jambot: Couldn't reach Discord's REST API at DISCORD_API_BASE_URL (the connection was "
        "refused): check the network connection and that setting."
    )


async def test_sync_through_a_wrong_api_path_names_the_setting(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        base = discord.api_base_url.removesuffix("/api/v10") + "/api/v6"
        code, _out, err = await jambot(
            "sync",
            cwd=tmp_path,
            env={"DISCORD_TOKEN": discord.bot_token, "DISCORD_API_BASE_URL": base},
        )
    assert code == 1
    assert one_line(err) == (
        "jambot: Logging in through DISCORD_API_BASE_URL failed (404 Not Found): check that "
        "setting."
    )


@pytest.mark.parametrize(
    ("unreachable", "sentence"),
    [
        (
            "gateway",
            "jambot: Couldn't reach Discord's gateway at DISCORD_GATEWAY_URL (the connection was "
            "refused): check the network connection and that setting.",
        ),
        (
            "rest",
            "jambot: Couldn't reach Discord's REST API at DISCORD_API_BASE_URL (the connection "
            "was refused): check the network connection and that setting.",
        ),
        (
            "gateway path",
            "jambot: Couldn't reach Discord's gateway at DISCORD_GATEWAY_URL (it answered 404 "
            "instead of opening a websocket): check the network connection and that setting.",
        ),
    ],
)
async def test_run_with_discord_unreachable_names_the_setting(
    tmp_path: Path, unreachable: str, sentence: str
) -> None:
    async with FakeDiscord() as discord:
        urls = {
            "gateway": {"DISCORD_GATEWAY_URL": closed_port_url("ws")},
            "rest": {"DISCORD_API_BASE_URL": closed_port_url("http", "/api/v10")},
            "gateway path": {"DISCORD_GATEWAY_URL": discord.gateway_url + "/nowhere"},
        }[unreachable]
        env = {
            "DISCORD_TOKEN": discord.bot_token,
            "REPLICATE_API_TOKEN": "r8_x",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'jambot.db'}",
            "DISCORD_API_BASE_URL": discord.api_base_url,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        } | urls
        code, _out, err = await jambot("run", cwd=tmp_path, env=env)
    assert code == 1
    assert one_line(err) == sentence


def gateway_closed(code: int) -> discord_py.ConnectionClosed:
    return discord_py.ConnectionClosed(SimpleNamespace(close_code=code), shard_id=None)  # type: ignore[arg-type]


def http_error(status: int, reason: str, body: dict[str, object] | str) -> discord_py.HTTPException:
    return discord_py.HTTPException(SimpleNamespace(status=status, reason=reason), body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "code", "sentence"),
    [
        (gateway_closed(4004), 2, "Discord rejected DISCORD_TOKEN: see .env.example."),
        (gateway_closed(4013), 1, "Discord's gateway closed the connection (code 4013)."),
        (
            discord_py.GatewayNotFound(),
            1,
            "Couldn't reach Discord's gateway at DISCORD_GATEWAY_URL (Discord found no gateway "
            "to connect to): check the network connection and that setting.",
        ),
        (
            http_error(503, "Service Unavailable", "<html>\n<body>upstream</body>"),
            1,
            "Discord refused a request (503 Service Unavailable).",
        ),
        (
            http_error(
                429, "Too Many Requests", {"message": "You are being rate limited.", "code": 0}
            ),
            1,
            "Discord refused a request (429 Too Many Requests).",
        ),
    ],
)
def test_each_start_failure_is_one_sentence(
    capsys: pytest.CaptureFixture[str], error: BaseException, code: int, sentence: str
) -> None:
    assert explain_failure(error) == code
    assert capsys.readouterr().err == f"jambot: {sentence}\n"
