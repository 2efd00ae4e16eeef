"""Durable jobs through the real bot: restarts, fairness, the concurrency cap, limits, cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.settings import Settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction
from tests.fakes.replicate import FakePrediction, FakeReplicate, Outcome
from tests.harness import (
    BotProcess,
    Harness,
    bot_settings,
    fakes,
    harness,
    is_final_edit,
    spawn_bot,
    start_bot,
    to_options,
    wait_for,
)


def deliveries(h_discord: object, interaction: FakeInteraction) -> list[object]:
    calls = h_discord.calls  # type: ignore[attr-defined]
    return [c for c in calls if c.files and f"/{interaction.token}/" in c.path]


async def test_restart_mid_generation_resumes_without_paying_twice(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        first, interaction, prediction = await _child_mid_generation(
            settings, discord, replicate, tmp_path, prompt="survive a crash", duration=2
        )
        await first.kill()  # SIGKILL: no cleanup of any kind

        second = await start_bot(settings, discord)
        try:
            replicate.finish(prediction.id)
            final = await discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
            await asyncio.sleep(0.5)  # a duplicate delivery would show up here
            assert len(replicate.creates) == 1
            assert len(deliveries(discord, interaction)) == 1
            assert final.files[0][0].endswith(".wav")
            job = await Harness(discord, replicate, settings, second).job_for(interaction)
            assert job.status == "delivered" and job.prediction_id == prediction.id
        finally:
            await second.stop()


async def test_restart_keeps_the_line_in_order_and_delivers_each_once(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        replicate.run_seconds = None
        settings = bot_settings(
            discord, replicate, tmp_path / "jambot.db", max_concurrent_generations=1
        )
        first = await spawn_bot(settings, discord, tmp_path)
        sent = []
        for n in range(3):
            sent.append(
                await discord.send_interaction(
                    "music", to_options({"prompt": f"track {n}", "duration": 1}), user_id=500 + n
                )
            )
            await wait_for(lambda n=n: len(_jobs(tmp_path)) > n, 10)
        await replicate.wait_for_prediction(timeout=15)
        await wait_for(lambda: any(job[1] for job in _jobs(tmp_path)), 10)
        await first.kill()

        replicate.run_seconds = 0.2
        for prediction in replicate.predictions.values():
            prediction.finish()
        second = await start_bot(settings, discord)
        try:
            for interaction in sent:
                await discord.wait_for_call(lambda c, i=interaction: is_final_edit(c, i), 20)
            await asyncio.sleep(0.5)
            prompts = [c.body["input"]["prompt"] for c in replicate.creates]
            assert prompts == ["track 0", "track 1", "track 2"]
            assert [len(deliveries(discord, i)) for i in sent] == [1, 1, 1]
        finally:
            await second.stop()


async def test_sigterm_exits_quickly_and_leaves_the_job_to_resume(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        child, interaction, prediction = await _child_mid_generation(
            settings, discord, replicate, tmp_path, prompt="graceful", duration=1
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await asyncio.wait_for(child.terminate(), 10)
        assert loop.time() - started < 10
        assert code == 0, child.log
        assert replicate.cancels == []  # the prediction keeps running for the next start
        assert _jobs(tmp_path)[0][2] == "running"
        assert "DISCORD_TOKEN" not in child.log and discord.bot_token not in child.log
        assert replicate.token not in child.log

        second = await start_bot(settings, discord)
        try:
            replicate.finish(prediction.id)
            await discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
            assert len(replicate.creates) == 1
        finally:
            await second.stop()


async def test_round_robin_across_users(tmp_path: Path) -> None:
    async with harness(tmp_path, max_concurrent_generations=1) as h:
        h.replicate.run_seconds = 0.4
        sent = []
        for prompt, user in [("a0", 1), ("a1", 1), ("a2", 1), ("b0", 2)]:  # b0 arrives last
            sent.append(await h.music(prompt=prompt, duration=1, user_id=user))
            await h.job_for(sent[-1], terminal=False)
        for interaction in sent:
            await h.final_reply(interaction)
        prompts = [c.body["input"]["prompt"] for c in h.replicate.creates]
        assert prompts == ["a0", "b0", "a1", "a2"]


async def test_queue_position_is_shown_and_updated(tmp_path: Path) -> None:
    async with harness(tmp_path, max_concurrent_generations=1) as h:
        h.replicate.run_seconds = 2.5  # each place stands longer than the 2 s between edits
        first = await h.music(prompt="one", duration=1, user_id=1)
        await h.replicate.wait_for_prediction()
        second = await h.music(prompt="two", duration=1, user_id=2)
        await h.job_for(second, terminal=False)
        third = await h.music(prompt="three", duration=1, user_id=3)
        await h.discord.wait_for_call(
            lambda c: "**2nd** in line" in str(c.json) and third.token in c.path
        )
        for interaction in (first, second, third):
            await h.final_reply(interaction)
        texts = [str(c.json) for c in h.discord.calls_for(third) if c.method == "PATCH"]
        assert any("**2nd** in line" in t for t in texts)
        assert any("Next in line" in t for t in texts)


async def test_concurrency_cap_is_never_exceeded(tmp_path: Path) -> None:
    async with harness(tmp_path, max_concurrent_generations=2) as h:
        h.replicate.run_seconds = 0.3
        sent = await asyncio.gather(
            *(h.music(prompt=f"p{n}", duration=1, user_id=100 + n) for n in range(6))
        )
        for interaction in sent:
            await h.final_reply(interaction)
        assert h.bot.services.scheduler.peak_running == 2
        spans = [(p.created_at, p.finished_at) for p in h.replicate.predictions.values()]
        for start, _ in spans:
            overlapping = sum(1 for s, e in spans if s <= start < (e or float("inf")))
            assert overlapping <= 2
        assert len(h.replicate.creates) == 6


async def _refusal(h: Harness, interaction: FakeInteraction) -> str:
    followup = await h.discord.wait_for_call(
        lambda c: c.method == "POST" and c.path.endswith(interaction.token)
    )
    assert followup.json["flags"] & 64, "a refusal is ephemeral"
    deleted = [c for c in h.discord.calls_for(interaction) if c.method == "DELETE"]
    assert deleted, "the public placeholder is removed"
    return str(followup.json["content"])


async def test_cooldown_refuses_with_when_to_try_again(tmp_path: Path) -> None:
    async with harness(tmp_path, user_cooldown_seconds=60) as h:
        await h.final_reply(await h.music(prompt="first", duration=1))
        refused = await h.music(prompt="second", duration=1)
        text = await _refusal(h, refused)
        assert "You can request another track in 1 min." in text
        assert len(h.replicate.creates) == 1
        assert len(await h.bot.services.store.recent_for_user(refused.user_id)) == 1


async def test_daily_quota_refuses_with_the_reset_time(tmp_path: Path) -> None:
    async with harness(tmp_path, daily_quota_per_user=1) as h:
        await h.final_reply(await h.music(prompt="first", duration=1))
        text = await _refusal(h, await h.music(prompt="second", duration=1))
        assert "00:00 UTC" in text
        assert len(h.replicate.creates) == 1


async def test_queue_cap_refuses(tmp_path: Path) -> None:
    async with harness(tmp_path, max_queued_per_user=1) as h:
        h.replicate.run_seconds = 1.0
        first = await h.music(prompt="first", duration=1)
        await h.job_for(first, terminal=False)
        text = await _refusal(h, await h.music(prompt="second", duration=1))
        assert "waiting" in text
        await h.final_reply(first)
        assert len(h.replicate.creates) == 1


async def test_cancel_a_running_job_cancels_at_replicate(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = None
        interaction = await h.music(prompt="stop me", duration=1)
        prediction = await h.replicate.wait_for_prediction()
        job = await h.job_for(interaction, terminal=False)
        await wait_for(lambda: _has_prediction(h, job.id), 5)
        await h.discord.send_interaction("jam", to_options({"job": job.id}), subcommand="cancel")
        await wait_for(lambda: prediction.id in h.replicate.cancels, 10)
        await h.discord.wait_for_call(
            lambda c: "Cancelled" in str(c.json) and interaction.token in c.path
        )
        assert (await h.bot.services.store.get(job.id)).status == "cancelled"  # type: ignore[union-attr]
        assert not deliveries(h.discord, interaction)


async def test_cancel_a_queued_job_creates_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path, max_concurrent_generations=1) as h:
        h.replicate.run_seconds = 0.8
        running = await h.music(prompt="running", duration=1, user_id=7)
        await h.replicate.wait_for_prediction()
        queued = await h.music(prompt="queued", duration=1, user_id=7)
        job = await h.job_for(queued, terminal=False)
        await h.discord.send_interaction(
            "jam", to_options({"job": job.id}), subcommand="cancel", user_id=7
        )
        await h.discord.wait_for_call(
            lambda c: "Cancelled" in str(c.json) and queued.token in c.path
        )
        await h.final_reply(running)
        await asyncio.sleep(0.3)
        assert [c.body["input"]["prompt"] for c in h.replicate.creates] == ["running"]


async def test_someone_elses_job_cannot_be_cancelled(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.music(prompt="mine", duration=1, user_id=1)
        job = await h.job_for(interaction, terminal=False)
        other = await h.discord.send_interaction(
            "jam", to_options({"job": job.id}), subcommand="cancel", user_id=2
        )
        reply = await h.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path.endswith(other.token)
        )
        assert f"no job #{job.id}" in reply.json["content"]
        await h.final_reply(interaction)


async def test_jam_history_queue_and_quota(tmp_path: Path) -> None:
    async with harness(tmp_path, daily_quota_per_user=5) as h:
        await h.final_reply(await h.music(prompt="remember me", duration=1, user_id=9))
        await wait_for(lambda: _delivered(h, 9), 5)
        history = await h.discord.send_interaction("jam", subcommand="history", user_id=9)
        reply = await h.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path.endswith(history.token)
        )
        assert "remember me" in reply.json["content"]
        assert "https://discord.com/channels/" in reply.json["content"]
        quota = await h.discord.send_interaction("jam", subcommand="quota", user_id=9)
        reply = await h.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path.endswith(quota.token)
        )
        assert "**4** of 5" in reply.json["content"]
        queue = await h.discord.send_interaction("jam", subcommand="queue", user_id=9)
        reply = await h.discord.wait_for_call(
            lambda c: c.path.startswith(f"/interactions/{queue.id}/")
        )
        assert "0 waiting" in reply.json["data"]["content"]
        assert reply.json["data"]["flags"] & 64


async def _delivered(h: Harness, user_id: int) -> bool:
    jobs = await h.bot.services.store.recent_for_user(user_id)
    return bool(jobs) and jobs[0].status == "delivered"


async def _has_prediction(h: Harness, job_id: int) -> bool:
    job = await h.bot.services.store.get(job_id)
    return job is not None and job.prediction_id is not None


def _jobs(tmp_path: Path) -> list[tuple[int, str | None, str]]:
    import sqlite3

    path = tmp_path / "jambot.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT id, prediction_id, status FROM jobs ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


async def _child_mid_generation(
    settings: Settings,
    discord: FakeDiscord,
    replicate: FakeReplicate,
    tmp_path: Path,
    *,
    prompt: str,
    duration: int,
) -> tuple[BotProcess, FakeInteraction, FakePrediction]:
    """`jambot run` as a child, one /music sent, its prediction held processing and its id
    committed to the store: the moment a crash or a SIGTERM is most costly."""
    replicate.run_seconds = None  # stays processing until finish()
    child = await spawn_bot(settings, discord, tmp_path)
    interaction = await discord.send_interaction(
        "music", to_options({"prompt": prompt, "duration": duration})
    )
    prediction = await replicate.wait_for_prediction(timeout=15)
    await wait_for(lambda: _stored_prediction(tmp_path, prediction.id), 10)
    return child, interaction, prediction


def _stored_prediction(tmp_path: Path, prediction_id: str) -> bool:
    return any(row[1] == prediction_id for row in _jobs(tmp_path))


async def test_a_resumed_prediction_that_died_is_made_anew(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        first, interaction, prediction = await _child_mid_generation(
            settings, discord, replicate, tmp_path, prompt="phoenix", duration=1
        )
        await first.kill()
        prediction.outcome = Outcome.failed()  # CUDA out of memory while the bot was down
        prediction.finish()
        replicate.run_seconds = 0.2

        second = await start_bot(settings, discord)
        try:
            await discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
            assert len(replicate.creates) == 2
            assert len(deliveries(discord, interaction)) == 1
        finally:
            await second.stop()


async def test_simultaneous_commands_of_one_user_cannot_slip_past_a_limit(tmp_path: Path) -> None:
    async with harness(tmp_path, max_queued_per_user=1) as h:
        h.replicate.run_seconds = 1.0
        await asyncio.gather(
            h.music(prompt="one", duration=1, user_id=42),
            h.music(prompt="two", duration=1, user_id=42),
        )
        await wait_for(
            lambda: [c for c in h.discord.calls if c.method == "DELETE"], 10
        )  # one placeholder removed: that command was refused
        await asyncio.sleep(0.3)
        assert len(await h.bot.services.store.recent_for_user(42)) == 1
        assert len(h.replicate.creates) == 1
