"""The buttons on jambot's messages, clicked through the fake Discord (type 3 interactions)
with the real bot: Cancel, Regenerate, Variation and Extend, after restarts and double clicks.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bot.music.tags import read_tags
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction, RestCall
from tests.harness import (
    Harness,
    audio_seconds,
    bot_settings,
    fakes,
    harness,
    spawn_bot,
    start_bot,
    to_options,
    wait_for,
)

NO_PERMISSIONS = "0"
MANAGE_MESSAGES = str(1 << 13)


def custom_ids(components: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for component in components:
        if "custom_id" in component:
            found.append(component["custom_id"])
        found += custom_ids(component.get("components") or [])
    return found


def message_of(call: RestCall) -> int:
    assert call.response is not None
    return int(call.response["id"])


async def delivered(h: Harness, interaction: FakeInteraction) -> tuple[RestCall, int]:
    final = await h.final_reply(interaction)
    assert final.files, final.json
    return final, message_of(final)


async def click(
    discord: FakeDiscord, custom_id: str, message_id: int, user_id: int, **kwargs: Any
) -> FakeInteraction:
    return await discord.send_component(custom_id, message_id=message_id, user_id=user_id, **kwargs)


async def private_answer(discord: FakeDiscord, interaction: FakeInteraction) -> str:
    call = await discord.wait_for_call(
        lambda c: c.method == "POST" and c.path.endswith(f"/{interaction.token}"), 20
    )
    return str(call.json["content"])


async def test_cancel_button_while_running_stops_the_job_and_goes_away(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = None
        interaction = await h.music(prompt="stop me", duration=1, user_id=11)
        prediction = await h.replicate.wait_for_prediction()
        with_button = await h.discord.wait_for_call(
            lambda c: (
                c.method == "PATCH"
                and interaction.token in c.path
                and any(
                    i.startswith("jam:cancel:") for i in custom_ids(c.json.get("components", []))
                )
            ),
            20,
        )
        [button] = custom_ids(with_button.json["components"])
        clicked = await click(h.discord, button, message_of(with_button), user_id=11)
        assert "Cancelled job" in await private_answer(h.discord, clicked)
        await wait_for(lambda: prediction.id in h.replicate.cancels, 10)
        final = await h.discord.wait_for_call(
            lambda c: interaction.token in c.path and "Cancelled" in str(c.json), 10
        )
        assert final.json["components"] == []  # the button is gone
        assert clicked.callback_type == 5  # acknowledged with a private "thinking…"


async def test_a_strangers_cancel_is_refused_privately_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = 1.5
        interaction = await h.music(prompt="not yours", duration=1, user_id=11)
        job = await h.job_for(interaction, terminal=False)
        await h.replicate.wait_for_prediction()
        clicked = await click(
            h.discord,
            f"jam:cancel:{job.id}",
            await _placeholder(h, interaction),
            user_id=99,
            permissions=NO_PERMISSIONS,
        )
        assert "Only the person who asked" in await private_answer(h.discord, clicked)
        _, message_id = await delivered(h, interaction)
        assert h.replicate.cancels == []
        ids = custom_ids(h.discord.messages[message_id].components)
        assert not any(i.startswith("jam:cancel:") for i in ids)  # a delivered track: no Cancel
        assert f"jam:regenerate:{job.id}" in ids and f"jam:extend:{job.id}" in ids


async def test_a_moderator_may_cancel_someone_elses_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = None
        interaction = await h.music(prompt="moderated", duration=1, user_id=11)
        job = await h.job_for(interaction, terminal=False)
        await h.replicate.wait_for_prediction()
        clicked = await click(
            h.discord,
            f"jam:cancel:{job.id}",
            await _placeholder(h, interaction),
            user_id=42,
            permissions=MANAGE_MESSAGES,
        )
        assert "Cancelled job" in await private_answer(h.discord, clicked)
        assert (await h.job_for(interaction)).status == "cancelled"


async def test_regenerate_makes_a_new_track_for_the_clicker_with_a_new_seed(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        original = await h.music(prompt="same but new", duration=1, seed=1234, user_id=11)
        _, message_id = await delivered(h, original)
        job = await h.job_for(original)
        clicked = await click(h.discord, f"jam:regenerate:{job.id}", message_id, user_id=22)
        final, new_message = await delivered(h, clicked)
        assert clicked.callback_type == 5  # a new public "thinking…" message
        assert new_message != message_id and h.discord.messages[message_id].attachments
        first, second = (c.body["input"] for c in h.replicate.creates)
        assert second["prompt"] == first["prompt"] and second["duration"] == first["duration"]
        assert first["seed"] == 1234 and second["seed"] != 1234
        regenerated = await h.job_for(clicked)
        assert (regenerated.user_id, regenerated.action, regenerated.parent_job_id) == (
            22,
            "regenerate",
            job.id,
        )
        assert final.json["embeds"][0]["description"] == f"Regenerated from #{job.id}"


async def test_a_double_click_makes_one_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        original = await h.music(prompt="click twice", duration=1, user_id=11)
        _, message_id = await delivered(h, original)
        job = await h.job_for(original)
        h.replicate.run_seconds = 1.0
        await asyncio.gather(
            click(h.discord, f"jam:regenerate:{job.id}", message_id, user_id=22),
            click(h.discord, f"jam:regenerate:{job.id}", message_id, user_id=22),
        )
        refused = await wait_for(
            lambda: [c for c in h.discord.calls if c.method == "DELETE"], 10
        )  # one placeholder removed: that click was refused
        assert len(refused) == 1
        await asyncio.sleep(1.5)
        assert len(h.replicate.creates) == 2  # the original and one regeneration
        jobs = await h.bot.services.store.recent_for_user(22)
        assert len(jobs) == 1


async def test_variation_keeps_the_seed_and_nudges_the_temperature(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        original = await h.music(prompt="a cousin", duration=1, seed=77, temperature=1.0)
        _, message_id = await delivered(h, original)
        job = await h.job_for(original)
        clicked = await click(h.discord, f"jam:variation:{job.id}", message_id, user_id=22)
        await delivered(h, clicked)
        varied = h.replicate.creates[1].body["input"]
        assert varied["seed"] == 77 and varied["temperature"] == pytest.approx(1.1)


async def test_extend_continues_the_track_and_delivers_a_longer_one_that_starts_with_it(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        original = await h.music(prompt="grow this", duration=3, user_id=11)
        first, message_id = await delivered(h, original)
        original_audio = first.files[0][1]
        job = await h.job_for(original)
        clicked = await click(h.discord, f"jam:extend:{job.id}", message_id, user_id=22)
        final, _ = await delivered(h, clicked)

        create = h.replicate.creates[1].body["input"]
        assert create["continuation"] is True and create["duration"] == 6
        sent = h.replicate.input_audio_bytes(h.replicate.creates[1].prediction_id)
        assert audio_seconds(sent) == pytest.approx(3, abs=0.05)  # readable: the whole original

        extended = final.files[0][1]
        assert audio_seconds(extended) == pytest.approx(6, abs=0.1)
        before, _ = sf.read(io.BytesIO(original_audio), dtype="int16", always_2d=True)
        after, _ = sf.read(io.BytesIO(extended), dtype="int16", always_2d=True)
        keep = len(before) - int(0.1 * 32000)  # up to the crossfade, the very same samples
        assert np.array_equal(after[:keep], before[:keep])
        tags = read_tags(extended, final.files[0][0].rsplit(".", 1)[-1])
        assert tags["title"] == "grow this" and str(job.id) in tags["extended_from"]
        assert final.json["embeds"][0]["description"] == f"Extended from #{job.id}"


async def test_extending_a_long_track_uploads_its_end_and_grows_past_the_cap(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, max_duration_seconds=30) as h:
        original = await h.music(prompt="a long jam", duration=20, user_id=11)
        _, message_id = await delivered(h, original)
        job = await h.job_for(original)
        clicked = await click(h.discord, f"jam:extend:{job.id}", message_id, user_id=11)
        final, _ = await delivered(h, clicked)
        create = h.replicate.creates[1].body["input"]
        assert create["duration"] == 30  # 15 s of the original's end, then 15 s of new music
        assert create["input_audio"].startswith(h.replicate.base_url + "/v1/files/")
        assert len(h.replicate.uploads) == 1  # over 1 MB: through Replicate's file upload
        sent = h.replicate.input_audio_bytes(h.replicate.creates[1].prediction_id)
        assert audio_seconds(sent) == pytest.approx(15, abs=0.05)
        assert audio_seconds(final.files[0][1]) == pytest.approx(35, abs=0.1)


async def test_the_delivered_file_says_how_it_was_made(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        final, _ = await delivered(h, await h.music(prompt="tagged", duration=1, seed=5))
        name, data, _ = final.files[0]
        tags = read_tags(data, name.rsplit(".", 1)[-1])
        assert tags["title"] == "tagged" and tags["seed"] == "5"
        assert tags["model"] == "stereo-large" and float(tags["duration"]) == 1


async def test_a_click_after_a_sigkill_restart_works(tmp_path: Path) -> None:
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db")
        child = await spawn_bot(settings, discord, tmp_path)
        original = await discord.send_interaction(
            "music", to_options({"prompt": "before the crash", "duration": 1}), user_id=11
        )
        final = await discord.wait_for_call(
            lambda c: c.method == "PATCH" and original.token in c.path and bool(c.files), 20
        )
        ids = custom_ids(discord.messages[message_of(final)].components)
        await wait_for(lambda: _statuses(tmp_path) == ["delivered"], 10)
        await child.kill()

        second = await start_bot(settings, discord)
        try:
            regenerate = next(i for i in ids if i.startswith("jam:regenerate:"))
            clicked = await click(discord, regenerate, message_of(final), user_id=22)
            await discord.wait_for_call(
                lambda c: c.method == "PATCH" and clicked.token in c.path and bool(c.files), 20
            )
            assert len(replicate.creates) == 2
        finally:
            await second.stop()


async def test_a_too_long_clip_to_continue_costs_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        clip = _wav(seconds=12)
        interaction = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "continue", "duration": 8, "continuation": True}),
            attachments={"audio": ("long.wav", clip)},
        )
        final = await h.final_reply(interaction)
        assert "longer than the track" in final.json["content"]
        await asyncio.sleep(0.3)
        assert h.replicate.creates == []


async def _placeholder(h: Harness, interaction: FakeInteraction) -> int:
    """The placeholder's message id, once it shows its Cancel button (nobody can click a
    button before it is there: discord.py ignores a click on a message without it)."""
    callback = await h.discord.wait_for_call(
        lambda c: c.path.startswith(f"/interactions/{interaction.id}/"), 10
    )
    assert callback.status in (200, 204)
    await h.discord.wait_for_call(
        lambda c: (
            c.method == "PATCH"
            and interaction.token in c.path
            and any(i.startswith("jam:cancel:") for i in custom_ids(c.json.get("components", [])))
        ),
        20,
    )
    message = next(m for m in h.discord.messages.values() if m.interaction_id == interaction.id)
    return message.id


def _wav(seconds: float) -> bytes:
    out = io.BytesIO()
    frames = np.zeros((int(seconds * 32000), 2), dtype=np.int16)
    sf.write(out, frames, 32000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _statuses(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "jambot.db") as db:
        return [str(row[0]) for row in db.execute("SELECT status FROM jobs ORDER BY id")]
