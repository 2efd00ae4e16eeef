"""Faults nobody scripts, through the real bot and the fakes: each once broke the promise that
every accepted job ends in one track or one sentence.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.fakes.discord_models import RestCall
from tests.fakes.replicate import HttpFault
from tests.harness import (
    bot_settings,
    fakes,
    harness,
    is_final_edit,
    run_until_it_stops,
    spawn_bot,
    start_bot,
    to_options,
    wait_for,
)
from tests.test_audio import CRASHING_HEADERS, crafted_wav


def _channel_posts(channel_id: int) -> object:
    return lambda c: c.method == "POST" and c.path == f"/channels/{channel_id}/messages"


async def _ephemeral_followup(h: object, token: str) -> RestCall:
    discord = h.discord  # type: ignore[attr-defined]
    return await discord.wait_for_call(  # type: ignore[no-any-return]
        lambda c: c.method == "POST" and c.path.endswith(f"/{token}"), 20
    )


async def test_a_locked_database_delays_a_job_and_refuses_new_ones_with_a_sentence(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = None
        first = await h.music(prompt="finish under a lock", duration=1, user_id=1)
        prediction = await h.replicate.wait_for_prediction()
        await wait_for(lambda: _recorded(tmp_path, prediction.id), 10)

        shell = sqlite3.connect(tmp_path / "jambot.db", isolation_level=None)
        shell.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell, mid-transaction
        try:
            prediction.finish()
            second = await h.music(prompt="arrives while locked", duration=1, user_id=2)
            reply = await _ephemeral_followup(h, second.token)
            assert "database is busy" in reply.json["content"]
            assert not h.bot.services.scheduler.health().ok
            assert not any(c.files for c in h.discord.calls_for(first))
        finally:
            shell.execute("ROLLBACK")
            shell.close()

        await h.final_reply(first)
        assert (await h.job_for(first)).status == "delivered"
        h.replicate.run_seconds = 0.2
        third = await h.music(prompt="after the lock", duration=1, user_id=3)
        assert (await h.final_reply(third)).files  # the dispatcher survived
        assert h.bot.services.scheduler.health().ok
        assert len(h.replicate.creates) == 2


async def test_an_output_that_is_not_audio_ends_in_a_sentence(tmp_path: Path) -> None:
    async with harness(tmp_path, max_queued_per_user=1) as h:
        h.replicate.output_data = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        interaction = await h.music(prompt="proxy page", duration=1, user_id=5)
        final = await h.final_reply(interaction)
        assert final.json["content"].startswith("⚠️") and not final.files
        assert "audio" in final.json["content"]
        assert (await h.job_for(interaction)).status == "failed"

        h.replicate.output_data = None  # the user isn't locked out by the queue cap
        again = await h.music(prompt="real audio", duration=1, user_id=5)
        assert (await h.final_reply(again)).files


async def test_a_hostile_output_file_fails_the_job_and_the_bot_lives_on(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.output_data = crafted_wav(*CRASHING_HEADERS["256-channels"])
        interaction = await h.music(prompt="a crafted header", duration=1)
        final = await h.final_reply(interaction)
        assert final.json["content"].startswith("⚠️") and not final.files
        assert (await h.job_for(interaction)).status == "failed"
        h.replicate.output_data = None
        assert (await h.final_reply(await h.music(prompt="next", duration=1))).files


async def test_an_attachment_that_is_not_audio_costs_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "follow this", "model": "melody-large"}),
            attachments={"audio": ("melody.wav", b"root:x:0:0:root:/root:/bin/bash\n" * 40)},
        )
        final = await h.final_reply(interaction)
        assert "audio must be an audio file" in final.json["content"]
        await asyncio.sleep(0.3)
        assert h.replicate.creates == []
        assert await h.bot.services.store.recent_for_user(interaction.user_id) == []


async def test_garbled_polls_are_polled_again_and_cost_one_prediction(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.fail_polls(HttpFault.html_page(), HttpFault.json_without_id())
        interaction = await h.music(prompt="through a bad proxy", duration=1)
        assert (await h.final_reply(interaction)).files
        assert len(h.replicate.creates) == 1


async def test_a_crash_between_a_channel_post_and_its_commit_posts_once(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        replicate.run_seconds = None
        child = await spawn_bot(settings, discord, tmp_path)
        old = datetime.now(UTC) - timedelta(minutes=14, seconds=50)  # token dies before the end
        await discord.send_interaction(
            "music", to_options({"prompt": "posted once", "duration": 1}), created_at=old
        )
        prediction = await replicate.wait_for_prediction(timeout=15)
        await wait_for(lambda: _recorded(tmp_path, prediction.id), 10)
        discord.hold_next("POST", rf"^/channels/{discord.channel_id}/messages$")
        prediction.finish()
        posted = await discord.wait_for_call(_channel_posts(discord.channel_id), 20)  # type: ignore[arg-type]
        assert posted.files
        await child.kill()  # the post went out; the bot never heard back nor committed it

        second = await start_bot(settings, discord)
        try:
            await wait_for(lambda: _status(tmp_path, prediction.id) == "delivered", 20)
            posts = [c for c in discord.calls if _channel_posts(discord.channel_id)(c)]  # type: ignore[operator]
            assert len(posts) == 2  # posted again after the restart, with the same nonce ...
            assert posts[0].json["nonce"] == posts[1].json["nonce"]
            assert posts[1].json["enforce_nonce"] is True
            with_files = [m for m in discord.messages.values() if m.attachments]
            assert len(with_files) == 1  # ... so Discord kept one message
            assert len(replicate.creates) == 1
        finally:
            await second.stop()


async def test_a_second_bot_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        first = await spawn_bot(settings, discord, tmp_path)
        try:
            code, _, err = await run_until_it_stops(settings, tmp_path, 30)
            lines = [line for line in err.splitlines() if line.strip()]
            assert code != 0
            sentences = [line for line in lines if line.startswith("jambot: ")]
            assert len(sentences) == 1 and lines[-1] == sentences[0], lines
            assert "DATABASE_URL" in sentences[0] and "Traceback" not in err
            assert first.process.returncode is None  # the first one carries on
        finally:
            await first.terminate()


async def test_cancel_after_the_upload_says_it_was_already_delivered(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.music(prompt="too late to cancel", duration=1)
        release = h.discord.hold_next(
            "PATCH", rf"/{interaction.token}/messages/", when=lambda c: bool(c.files)
        )
        upload = await h.discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
        job = await h.job_for(interaction, terminal=False)
        cancel = await h.discord.send_interaction(
            "jam", to_options({"job": job.id}), subcommand="cancel"
        )
        reply = await _ephemeral_followup(h, cancel.token)
        assert "already delivered" in reply.json["content"]
        release.set()
        await wait_for(lambda: _status(tmp_path, job.prediction_id) == "delivered", 10)
        assert upload.files
        assert not [c for c in h.discord.calls_for(interaction) if "Cancelled" in str(c.json)]


async def test_a_run_of_jobs_leaves_no_per_job_state_behind(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        sent = [await h.music(prompt=f"loop {n}", duration=1, user_id=n) for n in range(8)]
        for interaction in sent:
            await h.final_reply(interaction)
        await wait_for(lambda: h.bot.services.scheduler.running_count == 0, 10)
        await asyncio.sleep(0.5)
        front = h.bot.events.footprint()
        assert front.pop("done") == len(sent)  # bounded: the most recent RECENTLY_DONE
        assert front == {key: 0 for key in front}, front
        back = h.bot.services.scheduler.footprint()
        assert back == {key: 0 for key in back}, back


def _rows(tmp_path: Path) -> list[tuple[str | None, str]]:
    with sqlite3.connect(tmp_path / "jambot.db") as db:
        return [(r[0], r[1]) for r in db.execute("SELECT prediction_id, status FROM jobs")]


def _recorded(tmp_path: Path, prediction_id: str) -> bool:
    return any(row[0] == prediction_id for row in _rows(tmp_path))


def _status(tmp_path: Path, prediction_id: str | None) -> str | None:
    return next((status for pid, status in _rows(tmp_path) if pid == prediction_id), None)
