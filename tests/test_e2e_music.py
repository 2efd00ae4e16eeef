"""/music end to end: the real bot, discord.py and replicate client against the loopback fakes."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.replicate import HttpFault, Outcome, render_audio
from tests.harness import audio_seconds, harness, to_options, wait_for

CLIP = render_audio(duration=1, channels=2, sample_rate=32000, output_format="wav")


async def test_happy_path_defers_then_edits_original_with_playable_audio(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.music(prompt="warm lofi beat", duration=3, seed=77)
        final = await h.final_reply(interaction)
        calls = h.discord.calls_for(interaction)
        assert calls[0].path.startswith(f"/interactions/{interaction.id}/")
        assert calls[0].json["type"] == 5  # deferred "thinking" placeholder, first
        assert final.path.endswith("/messages/@original")
        (name, data, _type), (picture, png, _) = final.files
        assert name == "warm-lofi-beat-seed77.wav"
        assert audio_seconds(data) == pytest.approx(3, abs=0.05)
        assert picture == "waveform.png" and png.startswith(b"\x89PNG")
        embed = final.json["embeds"][0]
        assert embed["image"]["url"] == "attachment://waveform.png"
        assert embed["title"] == "warm lofi beat"
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["Seed"] == "77" and fields["Duration"] == "3s"
        assert fields["Model"] == "stereo-large" and fields["Format"] == "WAV"
        job = await h.job_for(interaction)
        assert job.status == "delivered" and job.prediction_id is not None
        assert len(h.replicate.creates) == 1


async def test_every_option_reaches_replicate_under_the_models_names(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.discord.send_interaction(
            "music",
            to_options(
                {
                    "prompt": "glitchy ambient",
                    "duration": 2,
                    "model": "stereo-melody-large",
                    "temperature": 0.8,
                    "top_k": 50,
                    "top_p": 0.5,
                    "guidance": 6,
                    "output_format": "mp3",
                    "normalization": "peak",
                    "seed": 5,
                }
            ),
            attachments={"audio": ("riff.wav", CLIP)},
        )
        final = await h.final_reply(interaction)
        body = h.replicate.creates[0].body["input"]
        audio_url = body.pop("input_audio")
        assert audio_url.startswith(h.discord.base_url + "/attachments/")
        assert body == {
            "prompt": "glitchy ambient",
            "model_version": "stereo-melody-large",
            "duration": 2,
            "temperature": 0.8,
            "top_k": 50,
            "top_p": 0.5,
            "classifier_free_guidance": 6,
            "output_format": "mp3",
            "normalization_strategy": "peak",
            "seed": 5,
            "continuation": False,
        }
        assert final.files[0][0].endswith(".mp3")


async def test_continuation_option_is_sent(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "keep going", "duration": 2, "continuation": True}),
            attachments={"audio": ("clip.wav", CLIP)},
        )
        await h.final_reply(interaction)
        body = h.replicate.creates[0].body["input"]
        assert body["continuation"] is True and body["model_version"] == "stereo-large"


async def test_mentions_in_the_prompt_ping_nobody(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        prompt = "@everyone @here <@&1234> <@5678> party anthem"
        interaction = await h.music(prompt=prompt, duration=1)
        await h.final_reply(interaction)
        for call in h.discord.calls_for(interaction):
            if call.method in {"PATCH", "POST"} and isinstance(call.json, dict):
                mentions = call.json.get("allowed_mentions")
                if "data" in call.json:
                    mentions = call.json["data"].get("allowed_mentions", mentions)
                assert mentions is None or mentions.get("parse") == [], call.json
        message = h.discord.messages[interaction.message_id]
        title = message.embeds[0]["title"]
        assert "@everyone" not in title.replace("@\u200beveryone", "")
        assert message.allowed_mentions == {"parse": []}


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"prompt": "x", "duration": -5}, "duration must be between 1 and 30 seconds."),
        ({"prompt": "x", "duration": 100000}, "duration must be between 1 and 30 seconds."),
        ({"prompt": "x", "top_p": 2.0}, "top_p must be between 0 and 1."),
        ({"prompt": "x" * 5000}, "prompt must be at most 1000 characters long."),
        ({"prompt": ""}, "prompt can't be empty"),
        ({"prompt": "x", "model": "small"}, "model must be one of"),
        ({"prompt": "x", "continuation": True}, "continuation needs an audio clip"),
    ],
)
async def test_crafted_out_of_range_options_cost_nothing(
    tmp_path: Path, options: dict[str, object], sentence: str
) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.music(**options)
        final = await h.final_reply(interaction)
        assert final.json["content"].startswith("⚠️ " + sentence)
        assert h.discord.calls_for(interaction)[0].json["type"] == 5
        await asyncio.sleep(0.2)
        assert h.replicate.creates == []


@pytest.mark.parametrize(
    ("fault", "outcome", "phrase"),
    [
        (HttpFault.unauthenticated(), None, "REPLICATE_API_TOKEN"),
        (HttpFault.payment_required(), None, "out of credit"),
        (HttpFault.not_found(), None, "REPLICATE_MODEL"),
        (HttpFault.input_invalid(), None, "rejected the request's settings"),
        (None, Outcome.failed("ValueError: bad melody"), "The model couldn't make this track"),
        (None, Outcome.canceled(), "cancelled"),
        (None, Outcome.malformed_output(), "couldn't be fetched"),
    ],
)
async def test_each_error_class_ends_as_a_clear_message(
    tmp_path: Path, fault: HttpFault | None, outcome: Outcome | None, phrase: str
) -> None:
    async with harness(tmp_path) as h:
        if fault is not None:
            h.replicate.fail_creates(fault)
        if outcome is not None:
            h.replicate.set_outcomes(outcome)
        interaction = await h.music(prompt="doomed", duration=1)
        final = await h.final_reply(interaction)
        content = final.json["content"]
        assert content.startswith("⚠️ ") and phrase in content
        assert h.replicate.token not in content
        assert len(h.replicate.creates) == 1
        assert (await h.job_for(interaction)).status == "failed"


async def test_transient_errors_are_retried_then_delivered(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.fail_creates(HttpFault.server_error(503), HttpFault.throttled(retry_after=0))
        interaction = await h.music(prompt="retry me", duration=1)
        final = await h.final_reply(interaction)
        assert final.files and len(h.replicate.creates) == 3


async def test_oversized_output_is_transcoded_to_fit(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        limit = 300_000  # a 10 s stereo WAV is ~1.28 MB
        interaction = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "long jam", "duration": 10}),
            attachment_size_limit=limit,
        )
        final = await h.final_reply(interaction)
        (name, data, _type), (_, png, _) = final.files
        assert len(data) + len(png) <= limit
        assert not name.endswith(".wav")
        assert audio_seconds(data) == pytest.approx(10, abs=0.2)


async def test_a_413_from_discord_shrinks_the_file_and_tries_again(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.music(prompt="big", duration=4)  # ~0.5 MB of WAV
        # Discord's real limit turns out lower than the one the interaction announced
        # (say the server just lost its boost): the upload is refused with 413 / 40005.
        interaction.attachment_size_limit = 400_000
        await h.job_for(interaction)
        uploads = [c for c in h.discord.calls_for(interaction) if c.files]
        assert uploads[0].status == 413
        assert uploads[-1].status == 200
        sent = [sum(len(f[1]) for f in c.files) for c in uploads]
        assert sent[-1] <= 400_000 < sent[0]
        assert sent == sorted(sent, reverse=True)
        audio = uploads[-1].files[0]
        assert audio[0].endswith((".flac", ".ogg", ".mp3"))
        assert audio_seconds(audio[1]) == pytest.approx(4, abs=0.1)
        assert (await h.job_for(interaction)).status == "delivered"


async def test_nothing_fits_gives_the_link_and_its_expiry(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        interaction = await h.discord.send_interaction(
            "music",
            to_options({"prompt": "huge", "duration": 5}),
            attachment_size_limit=2_000,
        )
        job = await h.job_for(interaction)
        last = [c for c in h.discord.calls_for(interaction) if c.method == "PATCH"][-1]
        content = last.json["content"]
        assert "too large to upload" in content
        assert f"{h.replicate.base_url}/files/{job.prediction_id}/out.wav" in content
        assert "the link expires <t:" in content
        assert not last.files and job.status == "delivered"


async def test_expired_token_delivers_in_the_channel_mentioning_only_the_requester(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        old = datetime.now(UTC) - timedelta(minutes=14, seconds=50)
        interaction = await h.discord.send_interaction(
            "music", to_options({"prompt": "late track", "duration": 1}), created_at=old
        )
        post = await h.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path == f"/channels/{h.discord.channel_id}/messages",
            20,
        )
        assert post.status == 200
        assert post.json["content"].startswith(f"<@{interaction.user_id}>")
        users = [str(u) for u in post.json["allowed_mentions"]["users"]]
        assert users == [str(interaction.user_id)]
        assert post.json["allowed_mentions"].get("parse", []) == []
        assert post.files and audio_seconds(post.files[0][1]) == pytest.approx(1, abs=0.05)
        job = await h.job_for(interaction)
        await wait_for(lambda: h.bot.services.store.get(job.id), 5)
        assert (await h.bot.services.store.get(job.id)).status == "delivered"  # type: ignore[union-attr]


async def test_token_rejected_by_discord_falls_back_to_the_channel(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = 0.6
        interaction = await h.music(prompt="token dies", duration=1)
        await h.discord.wait_for_call(lambda c: c.json and c.json.get("type") == 5)
        h.discord.expire_token(interaction.token)
        post = await h.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path.startswith("/channels/"), 20
        )
        assert post.files and post.json["content"].startswith(f"<@{interaction.user_id}>")


async def test_two_interactions_at_once_both_complete(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        first, second = await asyncio.gather(
            h.music(prompt="first", duration=1, user_id=111),
            h.music(prompt="second", duration=2, user_id=222),
        )
        one, two = await asyncio.gather(h.final_reply(first), h.final_reply(second))
        assert audio_seconds(one.files[0][1]) == pytest.approx(1, abs=0.05)
        assert audio_seconds(two.files[0][1]) == pytest.approx(2, abs=0.05)
        assert len(h.replicate.creates) == 2


async def test_progress_is_shown_and_throttled(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.replicate.run_seconds = 4.5
        interaction = await h.music(prompt="slow burn", duration=1)
        final = await h.final_reply(interaction)
        progress = [
            c for c in h.discord.calls_for(interaction) if c.method == "PATCH" and c is not final
        ]
        texts = [str(c.json["content"]) for c in progress]
        assert any("Generating" in t and "%" in t and "left" in t for t in texts), texts
        percents = [int(t.split(" · ")[1].rstrip("%")) for t in texts if "Generating ·" in t]
        assert percents == sorted(percents) and percents[-1] >= 40  # it moves forward
        times = [c.at for c in progress]
        assert all(b - a >= 1.9 for a, b in itertools.pairwise(times))  # one edit per ~2 s


async def test_a_refused_upload_ends_with_a_sentence_not_silence(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.discord.fail_next(
            "PATCH",
            r"/messages/",
            400,
            {"message": "Invalid Form Body", "code": 50035, "errors": {}},
            when=lambda call: bool(call.files),
        )
        interaction = await h.music(prompt="refused", duration=1)
        job = await h.job_for(interaction)
        assert job.status == "failed"
        await h.discord.wait_for_call(lambda c: "refused to post" in str(c.json))
        edits = [c for c in h.discord.calls_for(interaction) if c.method == "PATCH"]
        assert edits[-2].files and edits[-2].status == 400
        assert edits[-1].json["content"] == (
            "⚠️ The track was made, but Discord refused to post it."
        )


async def test_no_secret_reaches_a_log_line_even_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with harness(tmp_path) as h:
        h.replicate.fail_creates(HttpFault.server_error(500))
        await h.final_reply(await h.music(prompt="quiet logs", duration=1))
    assert len(caplog.records) > 50  # the debug logs really were captured
    assert h.discord.bot_token not in caplog.text
    assert h.replicate.token not in caplog.text
