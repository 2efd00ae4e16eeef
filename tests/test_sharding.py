"""Gateway sharding: SHARD_COUNT and SHARD_IDS, the fake's routing of guilds to shards, and
real bots holding shards: two `jambot run` processes sharing a bot's guilds, and one process
holding every shard (healthy only while all of them are connected)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest
from discord.ext import commands

from bot.chat.app import create_bot
from bot.cli import load_settings, main
from bot.settings import ConfigError, Settings
from tests.fakes.discord import FakeDiscord, FakeInteraction
from tests.fakes.discord_gateway import GatewaySession
from tests.fakes.discord_models import shard_of
from tests.harness import (
    bot_settings,
    fakes,
    harness,
    is_final_edit,
    spawn_bot,
    to_options,
    wait_for,
)
from tests.test_e2e_ops import free_port, health

# --------------------------------------------------------------------------- settings


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    return str(caught.value)


def test_a_shard_id_beyond_shard_count_is_refused_with_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = refusal(monkeypatch, SHARD_COUNT="2", SHARD_IDS="0,2")
    assert message == (
        "SHARD_IDS must be shard numbers below SHARD_COUNT (0 to 1): see .env.example."
    )


def test_shard_ids_without_shard_count_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARD_COUNT", raising=False)
    message = refusal(monkeypatch, SHARD_IDS="1")
    assert message == (
        "SHARD_IDS needs SHARD_COUNT (the total number of shards) to be set: see .env.example."
    )


def test_jambot_run_stops_on_bad_shards_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("SHARD_COUNT", "2")
    monkeypatch.setenv("SHARD_IDS", "2")
    assert main(["run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "jambot: SHARD_IDS must be shard numbers below SHARD_COUNT (0 to 1): see .env.example."
    ]


def test_shard_ids_are_parsed_and_empty_means_all_shards() -> None:
    def parsed(**values: object) -> list[int] | None:
        return Settings(_env_file=None, **values).shard_id_list  # type: ignore[arg-type]

    assert parsed(shard_count=4, shard_ids=" 3, 1,1 ") == [1, 3]
    assert parsed(shard_count=4, shard_ids="") is None
    assert parsed() is None


async def test_the_bot_is_sharded_only_with_a_shard_count() -> None:
    plain = create_bot(Settings(_env_file=None))
    assert not isinstance(plain, commands.AutoShardedBot)
    assert plain.shard_count is None  # one connection, identified without `shard`
    sharded = create_bot(Settings(_env_file=None, shard_count=4, shard_ids="2,3"))
    assert isinstance(sharded, commands.AutoShardedBot)
    assert (sharded.shard_count, sharded.shard_ids) == (4, [2, 3])
    everything = create_bot(Settings(_env_file=None, shard_count=2))
    assert isinstance(everything, commands.AutoShardedBot)
    assert (everything.shard_count, everything.shard_ids) == (2, None)  # all of them


# --------------------------------------------------------------------------- the fake's routing


def test_a_guild_belongs_to_shard_guild_id_shifted_22_modulo_the_count() -> None:
    assert shard_of(1 << 22, 2) == 1
    assert shard_of(2 << 22, 2) == 0
    assert shard_of((5 << 22) + 4_194_303, 3) == 2  # the low 22 bits don't count
    assert shard_of(1_100_000_000_000_000_100, 1) == 0
    assert shard_of(None, 4) == 0  # DMs: shard 0
    with pytest.raises(ValueError):
        shard_of(1, 0)


def test_a_session_receives_the_events_of_its_shard_only() -> None:
    def session(identify: dict[str, object]) -> GatewaySession:
        return GatewaySession(session_id="s", identify=identify)

    zero, one, unsharded = session({"shard": [0, 2]}), session({"shard": [1, 2]}), session({})
    assert [zero.receives(g << 22) for g in (0, 1, 2, 3)] == [True, False, True, False]
    assert [one.receives(g << 22) for g in (0, 1, 2, 3)] == [False, True, False, True]
    assert zero.receives(None) and not one.receives(None)
    assert all(unsharded.receives(g) for g in (None, 1 << 22, 2 << 22))
    assert (zero.shard, one.shard_id, unsharded.shard) == ((0, 2), 1, None)


def other_guild(fake: FakeDiscord) -> int:
    """A guild on shard 0 of 2; the fake's own guild is on shard 1."""
    guild = fake.guild_id + (1 << 22)
    assert (shard_of(guild, 2), shard_of(fake.guild_id, 2)) == (0, 1)
    return guild


async def identify(
    fake: FakeDiscord, session: aiohttp.ClientSession, shard: list[int]
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, object], list[str]]:
    """A raw connection identified as `shard`: its READY and the guilds it was sent."""
    ws = await session.ws_connect(fake.gateway_url + "?v=10&encoding=json")
    assert (await ws.receive_json())["op"] == 10
    await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "intents": 0, "shard": shard}})
    ready = await ws.receive_json()
    assert ready["t"] == "READY"
    guilds = []
    for _ in ready["d"]["guilds"]:
        created = await ws.receive_json()
        assert created["t"] == "GUILD_CREATE"
        guilds.append(created["d"]["id"])
    return ws, ready["d"], guilds


async def test_the_fake_routes_each_guild_to_its_shards_connection() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        second = other_guild(fake)
        channel = await fake.add_guild(second)
        ws0, ready0, guilds0 = await identify(fake, http, [0, 2])
        ws1, ready1, guilds1 = await identify(fake, http, [1, 2])
        assert (ready0["shard"], ready1["shard"]) == ([0, 2], [1, 2])
        assert (guilds0, guilds1) == ([str(second)], [str(fake.guild_id)])

        on_1 = await fake.send_interaction("jam", subcommand="queue")
        on_0 = await fake.send_interaction("jam", subcommand="queue", guild_id=second)
        assert (on_0.shard_id, on_1.shard_id) == (0, 1)
        assert on_0.session_id != on_1.session_id
        event0, event1 = await ws0.receive_json(), await ws1.receive_json()
        assert (event0["t"], event0["d"]["id"]) == ("INTERACTION_CREATE", str(on_0.id))
        assert event0["d"]["channel_id"] == str(channel)
        assert (event1["t"], event1["d"]["id"]) == ("INTERACTION_CREATE", str(on_1.id))

        await fake.close_shard(1)
        assert (await ws1.receive()).type is aiohttp.WSMsgType.CLOSE
        with pytest.raises(ConnectionError):
            await fake.send_interaction("jam", subcommand="queue")  # shard 1 is gone
        await fake.send_interaction("jam", subcommand="queue", guild_id=second)
        assert (await ws0.receive_json())["t"] == "INTERACTION_CREATE"  # shard 0 still up

        async with http.get(fake.api_base_url + "/gateway/bot", headers=bot_auth(fake)) as resp:
            body = await resp.json()
        assert body["url"] == fake.gateway_url and body["shards"] == 1
        assert set(body["session_start_limit"]) == {
            "total",
            "remaining",
            "reset_after",
            "max_concurrency",
        }
        await ws0.close()
    assert fake.response_violations == []


def bot_auth(fake: FakeDiscord) -> dict[str, str]:
    return {"Authorization": f"Bot {fake.bot_token}"}


async def test_the_fake_refuses_an_invalid_shard() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(fake.gateway_url)
        await ws.receive_json()
        await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "shard": [2, 2]}})
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4010
        assert fake.gateway_sessions == {}


# --------------------------------------------------------------------------- real bots


def job_interactions(database: Path) -> list[int]:
    """The interaction ids of the jobs one bot process recorded."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT interaction_id FROM jobs ORDER BY id").fetchall()
    return [int(row[0]) for row in rows]


async def answered(fake: FakeDiscord, interaction: FakeInteraction) -> None:
    final = await fake.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
    assert final.files, final.json


async def test_two_processes_each_serve_the_guilds_of_their_shard(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        second_guild = other_guild(discord)
        await discord.add_guild(second_guild)
        processes = []
        try:
            for shard in (0, 1):
                settings = bot_settings(
                    discord,
                    replicate,
                    tmp_path / f"shard{shard}.db",
                    shard_count=2,
                    shard_ids=str(shard),
                )
                processes.append(await spawn_bot(settings, discord, tmp_path))
            shards = [session.shard for session in discord.gateway_sessions.values()]
            assert shards == [(0, 2), (1, 2)]

            on_0 = await discord.send_interaction(
                "music", to_options({"prompt": "shard zero", "duration": 1}), guild_id=second_guild
            )
            on_1 = await discord.send_interaction(
                "music", to_options({"prompt": "shard one", "duration": 1})
            )
            assert (on_0.shard_id, on_1.shard_id) == (0, 1)
            await answered(discord, on_0)
            await answered(discord, on_1)
            assert job_interactions(tmp_path / "shard0.db") == [on_0.id]
            assert job_interactions(tmp_path / "shard1.db") == [on_1.id]
        finally:
            codes = [await process.terminate() for process in processes]
        assert codes == [0, 0], [process.log for process in processes]
        assert "gateway: this process holds shard 0 of 2" in processes[0].log
        assert "gateway: this process holds shard 1 of 2" in processes[1].log


async def test_one_process_holds_every_shard_and_is_healthy_only_with_all(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with harness(tmp_path, shard_count=2, metrics_port=port) as h:
        assert isinstance(h.bot, commands.AutoShardedBot)
        assert sorted(h.bot.shards) == [0, 1]
        shards = sorted(s.shard for s in h.discord.gateway_sessions.values() if s.shard)
        assert shards == [(0, 2), (1, 2)]
        second_guild = other_guild(h.discord)
        await h.discord.add_guild(second_guild)  # joined while connected: GUILD_CREATE on 0
        await wait_for(lambda: h.bot.get_guild(second_guild), 10)
        assert await health(port) == (200, "ok")

        async def answers(status: int) -> tuple[int, str] | None:
            got = await health(port)
            return got if got[0] == status else None

        await h.discord.close_shard(1, hold=True)
        _, reason = await wait_for(lambda: answers(503), 10)
        assert reason == "not connected to Discord's gateway: shard 1 of 2"
        on_0 = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "shard zero still works", "duration": 1}),
            guild_id=second_guild,
        )
        assert on_0.shard_id == 0
        await answered(h.discord, on_0)
        with pytest.raises(ConnectionError):
            await h.music(prompt="shard one is down", duration=1)

        await h.discord.release_shard(1)
        await wait_for(lambda: answers(200), 30)  # discord.py resumes shard 1 on its own
        on_1 = await h.music(prompt="shard one is back", duration=1)
        assert on_1.shard_id == 1
        await answered(h.discord, on_1)
