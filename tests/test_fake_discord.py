"""Self-tests of the fake Discord, driven by a real discord.py client and by raw HTTP/websocket."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import discord
import pytest
from discord.ext import commands

from tests.fakes.discord import FakeDiscord, FakeInteraction, RestCall

Outcome = tuple[str, Any]


class PingBot(commands.Bot):
    """A minimal real bot whose commands report what happened through ``outcomes``."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
        )
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self.proceed = asyncio.Event()
        self.payload_size = 3

    async def setup_hook(self) -> None:
        tree = self.tree

        @tree.command(description="Answer pong with a file")
        async def ping(interaction: discord.Interaction) -> None:
            deferred = await interaction.response.defer(thinking=True)
            assert deferred is not None
            await self.outcomes.put(("deferred", deferred.message_id))
            try:
                message = await interaction.edit_original_response(
                    content="pong",
                    attachments=[discord.File(io.BytesIO(b"abc"), "a.txt")],
                )
            except discord.HTTPException as exc:
                await self.outcomes.put(("error", exc))
            else:
                await self.outcomes.put(("edited", message))

        @tree.command(description="Defer, wait for the test, then edit")
        async def late(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await self.proceed.wait()
            try:
                await interaction.edit_original_response(
                    content="late",
                    attachments=[discord.File(io.BytesIO(b"x" * self.payload_size), "big.bin")],
                )
            except discord.HTTPException as exc:
                await self.outcomes.put(("error", exc))
            else:
                await self.outcomes.put(("edited", None))

        @tree.command(description="Read an uploaded attachment")
        async def upload(interaction: discord.Interaction, clip: discord.Attachment) -> None:
            data = await clip.read()
            await interaction.response.send_message(f"{clip.filename}:{len(data)}", ephemeral=True)
            await self.outcomes.put(("read", (clip.filename, clip.content_type, data)))

        @tree.command(description="Defer, then answer with followups")
        async def follow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            first = await interaction.followup.send("first", wait=True)
            second = await interaction.followup.send("second", wait=True, ephemeral=True)
            await self.outcomes.put(("followups", (first, second)))

        @tree.command(description="Post a message with a button")
        async def button(interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(discord.ui.Button(label="Again", custom_id="jam:again:1"))
            await interaction.response.send_message("tune", view=view)
            await self.outcomes.put(("button", None))

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        if interaction.type is discord.InteractionType.component and "custom_id" in data:
            await interaction.response.edit_message(content=f"clicked {data['custom_id']}")
            await self.outcomes.put(("clicked", data["custom_id"]))


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        with server.patch_discord_py():
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[PingBot]:
    client = PingBot()
    task = asyncio.create_task(client.start(fake.bot_token))
    try:
        await fake.wait_ready(timeout=5)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


async def outcome(bot: PingBot, kind: str) -> Any:
    got_kind, value = await asyncio.wait_for(bot.outcomes.get(), 5)
    assert got_kind == kind, (got_kind, value)
    return value


def webhook_patch(interaction: FakeInteraction) -> Any:
    def predicate(call: RestCall) -> bool:
        return call.method == "PATCH" and call.path.endswith(
            f"/{interaction.token}/messages/@original"
        )

    return predicate


# --------------------------------------------------------------------------- with a real bot


async def test_startup_calls_and_gateway(fake: FakeDiscord, bot: PingBot) -> None:
    assert [(c.method, c.path) for c in fake.calls[:2]] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    assert all(c.headers["Authorization"] == f"Bot {fake.bot_token}" for c in fake.calls[:2])
    assert fake.gateway_queries[0]["v"] == "10"
    assert fake.gateway_queries[0]["encoding"] == "json"
    identify = next(p for p in fake.gateway_received if p["op"] == 2)
    assert identify["d"]["intents"] == discord.Intents.default().value
    await bot.wait_until_ready()
    assert bot.user is not None and bot.user.id == fake.bot_user_id
    assert bot.application_id == fake.application_id
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    assert channel.guild.id == fake.guild_id


async def test_defer_then_edit_with_file(fake: FakeDiscord, bot: PingBot) -> None:
    interaction = await fake.send_interaction("ping")
    placeholder_id = await outcome(bot, "deferred")
    edited = await outcome(bot, "edited")

    callback, patch = fake.calls_for(interaction)
    assert callback.path == f"/interactions/{interaction.id}/{interaction.token}/callback"
    assert callback.json == {"type": 5}
    assert callback.query == {"with_response": "1"}
    assert callback.status == 200
    assert callback.response["interaction"]["response_message_loading"] is True
    assert placeholder_id == interaction.message_id

    assert patch.status == 200
    assert patch.files == [("a.txt", b"abc", "application/octet-stream")]
    assert patch.json["content"] == "pong"
    assert patch.json["attachments"] == [{"id": 0, "filename": "a.txt"}]
    assert "Authorization" not in patch.headers

    message = fake.messages[placeholder_id]
    assert message.content == "pong"
    assert [(a.filename, a.data) for a in message.attachments] == [("a.txt", b"abc")]
    assert message.flags == 0  # LOADING cleared
    assert message.type == 20
    assert isinstance(edited, discord.InteractionMessage)
    assert edited.id == placeholder_id
    assert edited.attachments[0].filename == "a.txt"
    assert await edited.attachments[0].read() == b"abc"

    assert fake.violations == []
    assert fake.response_violations == []
    # discord.py numbers new uploads with integers; the spec wants snowflake strings.
    assert len(fake.tolerated_violations) == 1
    assert "$.attachments[0].id: 0 is not of type 'string'" in fake.tolerated_violations[0]


async def test_expired_token_answers_401_50027(fake: FakeDiscord, bot: PingBot) -> None:
    interaction = await fake.send_interaction("late")
    await fake.wait_for_call(lambda c: c.path.endswith("/callback"))
    fake.expire_token(interaction.token)
    bot.proceed.set()
    error = await outcome(bot, "error")
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code, error.text) == (401, 50027, "Invalid Webhook Token")


async def test_token_older_than_15_minutes_is_dead(fake: FakeDiscord, bot: PingBot) -> None:
    old = datetime.now(UTC) - timedelta(minutes=16)
    interaction = await fake.send_interaction("ping", created_at=old)
    await outcome(bot, "deferred")
    error = await outcome(bot, "error")
    assert (error.status, error.code) == (401, 50027)
    assert interaction.created_at == old
    assert discord.utils.snowflake_time(interaction.id) == old.replace(
        microsecond=old.microsecond // 1000 * 1000
    )


async def test_oversized_upload_answers_413(fake: FakeDiscord, bot: PingBot) -> None:
    bot.payload_size = 11
    bot.proceed.set()
    interaction = await fake.send_interaction("late", attachment_size_limit=10)
    error = await outcome(bot, "error")
    assert (error.status, error.code) == (413, 40005)
    assert fake.messages[interaction.message_id or 0].loading


async def test_rate_limit_and_fault_injection(fake: FakeDiscord, bot: PingBot) -> None:
    body = {"message": "You are being rate limited.", "retry_after": 0.05, "global": False}
    fake.fail_next("PATCH", r"/messages/@original$", 429, body, {"Via": "1.1 google"})
    interaction = await fake.send_interaction("ping")
    await outcome(bot, "deferred")
    await outcome(bot, "edited")
    patches = [c for c in fake.calls_for(interaction) if c.method == "PATCH"]
    assert [c.status for c in patches] == [429, 200]
    assert patches[1].at - patches[0].at >= 0.05
    assert patches[1].files == patches[0].files

    fake.fail_next(
        "PATCH", r"/messages/@original$", 404, {"message": "Unknown Webhook", "code": 10015}
    )
    await fake.send_interaction("ping")
    await outcome(bot, "deferred")
    error = await outcome(bot, "error")
    assert isinstance(error, discord.NotFound)
    assert error.code == 10015


async def test_channel_messages_with_bot_auth(fake: FakeDiscord, bot: PingBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("hello", file=discord.File(io.BytesIO(b"RIFFdata"), "t.wav"))
    stored = fake.messages[sent.id]
    assert (stored.content, stored.attachments[0].data) == ("hello", b"RIFFdata")
    assert stored.attachments[0].content_type == "audio/x-wav"
    post = await fake.wait_for_call(lambda c: c.method == "POST" and c.path.endswith("/messages"))
    assert post.headers["Authorization"] == f"Bot {fake.bot_token}"
    edited = await sent.edit(content="bye", attachments=sent.attachments)
    assert edited.content == "bye" and edited.attachments[0].id == sent.attachments[0].id
    fetched = await channel.fetch_message(sent.id)
    assert (fetched.content, stored.edits) == ("bye", 1)
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(12345)
    # discord.py sends enforce_nonce with a nonce: a repeated nonce gives the same message.
    first = await channel.send("again", nonce=42)
    repeated = await channel.send("again", nonce=42)
    assert first.id == repeated.id
    assert fake.violations == []
    assert fake.response_violations == []


async def test_command_sync_and_registered_ids(fake: FakeDiscord, bot: PingBot) -> None:
    synced = await bot.tree.sync()
    names = {c["name"] for c in fake.commands}
    assert names == {"ping", "late", "upload", "follow", "button"}
    assert {c.name for c in synced} == names
    ids = {c["name"]: c["id"] for c in fake.commands}
    assert (await bot.tree.sync())[0].id == synced[0].id  # ids survive an overwrite

    guild = discord.Object(fake.guild_id)
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    interaction = await fake.send_interaction("ping")
    assert interaction.payload["data"]["guild_id"] == str(fake.guild_id)
    assert interaction.payload["data"]["id"] != ids["ping"]
    await outcome(bot, "deferred")
    await outcome(bot, "edited")
    assert fake.violations == []
    assert fake.response_violations == []


async def test_attachment_option_is_served(fake: FakeDiscord, bot: PingBot) -> None:
    wav = b"RIFF\x00\x00\x00\x00WAVEfmt "
    interaction = await fake.send_interaction("upload", attachments={"clip": ("take.wav", wav)})
    filename, content_type, data = await outcome(bot, "read")
    assert (filename, content_type, data) == ("take.wav", "audio/x-wav", wav)
    option = interaction.payload["data"]["options"][0]
    assert option["type"] == 11
    assert option["value"] in interaction.payload["data"]["resolved"]["attachments"]
    reply = fake.messages[interaction.message_id or 0]
    assert reply.ephemeral and reply.content == "take.wav:16"


async def test_first_followup_fills_the_placeholder(fake: FakeDiscord, bot: PingBot) -> None:
    interaction = await fake.send_interaction("follow")
    first, second = await outcome(bot, "followups")
    assert first.id == interaction.message_id
    assert fake.messages[first.id].content == "first"
    assert second.id != first.id and fake.messages[second.id].ephemeral
    assert interaction.followup_ids == [second.id]


async def test_component_click_updates_message(fake: FakeDiscord, bot: PingBot) -> None:
    interaction = await fake.send_interaction("button")
    await outcome(bot, "button")
    posted = fake.messages[interaction.message_id or 0]
    assert posted.components[0]["components"][0]["custom_id"] == "jam:again:1"
    click = await fake.send_component("jam:again:1", message_id=posted.id)
    assert await outcome(bot, "clicked") == "jam:again:1"
    callback = await fake.wait_for_call(lambda c: c.path.endswith(f"{click.token}/callback"))
    assert callback.json["type"] == 7
    assert fake.messages[posted.id].content == "clicked jam:again:1"
    assert fake.violations == []
    assert fake.response_violations == []


# --------------------------------------------------------------------------- raw protocol


async def raw_identify(fake: FakeDiscord, session: aiohttp.ClientSession) -> Any:
    ws = await session.ws_connect(fake.gateway_url + "?v=10&encoding=json")
    hello = await ws.receive_json()
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
    await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "intents": 0, "properties": {}}})
    ready = await ws.receive_json()
    guild = await ws.receive_json()
    assert (ready["t"], ready["s"], guild["t"], guild["s"]) == ("READY", 1, "GUILD_CREATE", 2)
    return ws


async def test_raw_gateway_and_interaction_shape(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await raw_identify(fake, session)
        await ws.send_json({"op": 1, "d": 2})
        assert (await ws.receive_json())["op"] == 11
        await fake.wait_ready()
        interaction = await fake.send_interaction(
            "jam", [{"name": "limit", "type": 4, "value": 5}], subcommand="history"
        )
        event = await ws.receive_json()
        assert (event["t"], event["s"]) == ("INTERACTION_CREATE", 3)
        d = event["d"]
        assert d["id"] == str(interaction.id) and d["token"] == interaction.token
        assert d["type"] == 2 and d["data"]["name"] == "jam"
        assert d["data"]["options"] == [
            {"name": "history", "type": 1, "options": [{"name": "limit", "type": 4, "value": 5}]}
        ]
        assert d["member"]["user"]["id"] == str(fake.user_id)
        assert d["attachment_size_limit"] == fake.attachment_size_limit
        assert d["authorizing_integration_owners"] == {"0": str(fake.guild_id)}
        await ws.close()

        base = fake.api_base_url
        url = f"{base}/interactions/{interaction.id}/{interaction.token}/callback"
        async with session.post(url, json={"type": 4, "data": {"content": "x" * 2001}}) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"] == "application/json"
            body = await resp.json()
            assert body["code"] == 50035
            assert body["errors"]["data"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
        assert len(fake.violations) == 1
        assert "$.data.content: " in fake.violations[0]
        assert "is too long" in fake.violations[0]
        fake.violations.clear()
        async with session.post(url, json={"type": 4, "data": {"content": ""}}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (400, 50006)
        async with session.post(url, json={"type": 4, "data": {"content": "ok"}}) as resp:
            assert resp.status == 204
        async with session.post(url, json={"type": 5}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (400, 40060)
        bad = f"{base}/interactions/{interaction.id}/nope/callback"
        async with session.post(bad, json={"type": 5}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (404, 10062)

        original = f"{base}/webhooks/{fake.application_id}/{interaction.token}/messages/@original"
        async with session.get(original) as resp:
            assert resp.status == 200
            assert (await resp.json())["content"] == "ok"
        async with session.get(
            f"{base}/webhooks/{fake.application_id}/nope/messages/@original"
        ) as resp:
            assert (resp.status, await resp.json()) == (
                401,
                {"message": "Invalid Webhook Token", "code": 50027},
            )
        async with session.get(original.replace("@original", "1")) as resp:
            assert (resp.status, (await resp.json())["code"]) == (404, 10008)
        async with session.get(f"{base}/users/@me") as resp:
            assert (resp.status, await resp.json()) == (
                401,
                {"message": "401: Unauthorized", "code": 0},
            )
        async with session.get(f"{base}/nothing/here") as resp:
            assert (resp.status, await resp.json()) == (
                404,
                {"message": "404: Not Found", "code": 0},
            )
        assert fake.calls[-1].path == "/nothing/here" and fake.calls[-1].status == 404
    assert fake.violations == []
    assert fake.response_violations == []


async def test_raw_gateway_rejects_a_wrong_token(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(fake.gateway_url)
        await ws.receive_json()
        await ws.send_str(json.dumps({"op": 2, "d": {"token": "wrong", "intents": 0}}))
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4004
        await ws.close()
    with pytest.raises(ConnectionError):
        await fake.send_interaction("ping")


async def test_raw_resume(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await raw_identify(fake, session)
        ready = next(p for p in fake.gateway_received if p["op"] == 2)
        assert ready["d"]["token"] == fake.bot_token
        session_id = next(iter(fake.gateway_sessions))
        await ws.close()
        ws = await session.ws_connect(fake.gateway_url)
        await ws.receive_json()
        await ws.send_json(
            {"op": 6, "d": {"token": fake.bot_token, "session_id": session_id, "seq": 2}}
        )
        resumed = await ws.receive_json()
        assert (resumed["t"], resumed["s"]) == ("RESUMED", 3)
        await fake.send_interaction("ping")
        assert (await ws.receive_json())["s"] == 4
        await ws.close()
