"""MusicRequest's constructors: options by their user names, stored text, and derived requests."""

from __future__ import annotations

import random

import pytest

from bot.music.errors import InvalidRequestError
from bot.music.request import MAX_DATA_URI_LENGTH, MusicRequest

CLIP = "https://cdn.example.com/attachments/1/2/track.wav"


# Every option by its user name, and the field each one fills.
OPTIONS = {"duration": 20, "model": "melody-large", "temperature": 0.7, "top_k": 100,
           "top_p": 0.9, "guidance": 5, "output_format": "mp3", "normalization": "peak",
           "seed": 42, "input_audio": CLIP, "continuation": True}  # fmt: skip
RENAMED = {
    "model": "model_version",
    "guidance": "classifier_free_guidance",
    "normalization": "normalization_strategy",
}


def test_options_take_the_names_users_know() -> None:
    fields = {RENAMED.get(name, name): value for name, value in OPTIONS.items()}
    expected = MusicRequest.parse({"prompt": "warm lofi beat", **fields})
    assert MusicRequest.from_options("warm lofi beat", **OPTIONS) == expected  # type: ignore[arg-type]


def test_options_left_out_take_the_defaults() -> None:
    assert MusicRequest.from_options("jazz") == MusicRequest.parse({"prompt": "jazz"})


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"duration": 31}, "duration must be between 1 and 30 seconds."),
        ({"guidance": 99}, "guidance must be between 0 and 20."),
        ({"continuation": True}, "continuation needs an audio clip to continue"),
    ],
)
def test_option_rejections_are_parses_sentences(options: dict[str, object], sentence: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        MusicRequest.from_options("jazz", **options)  # type: ignore[arg-type]
    assert caught.value.user_message.startswith(sentence)


def test_the_duration_cap_is_the_callers() -> None:
    assert MusicRequest.from_options("jazz", duration=60, max_duration=60).duration == 60
    with pytest.raises(InvalidRequestError, match="between 1 and 10 seconds"):
        MusicRequest.from_options("jazz", duration=11, max_duration=10)


def test_a_stored_request_reads_back_past_todays_cap() -> None:
    accepted = MusicRequest.from_options("jazz", duration=200, max_duration=300)
    assert MusicRequest.from_stored(accepted.model_dump_json()) == accepted
    with pytest.raises(ValueError):
        MusicRequest.from_stored('{"prompt": "jazz", "duration": 301}')
    with pytest.raises(ValueError):
        MusicRequest.from_stored("not json")


def test_a_new_seed_replaces_a_fixed_one_and_nothing_else() -> None:
    original = MusicRequest.from_options("jazz", seed=7, model="large", top_k=10)
    again = original.with_new_seed(random.Random(1))
    assert again.seed is not None and again.seed != 7
    assert again.model_copy(update={"seed": 7}) == original
    assert original.with_new_seed(random.Random(1)) == again  # the rng decides
    assert original.with_new_seed(12345).seed == 12345


def test_a_new_seed_never_repeats_the_old_one() -> None:
    drawn = random.Random(3).randint(0, 2**32 - 1)
    original = MusicRequest.from_options("jazz", seed=drawn)
    assert original.with_new_seed(random.Random(3)).seed != drawn


def test_a_seed_out_of_range_is_refused_in_words() -> None:
    with pytest.raises(InvalidRequestError, match="seed must be between"):
        MusicRequest.from_options("jazz").with_new_seed(-1)


@pytest.mark.parametrize("model", ["stereo-large", "large", "melody-large"])
def test_continuing_keeps_the_settings_and_the_model(model: str) -> None:
    original = MusicRequest.from_options("jazz", model=model, seed=3, duration=8)
    extended = original.continuing(CLIP, duration=16, max_duration=30)
    body = extended.to_replicate_input()
    assert body["input_audio"] == CLIP and body["continuation"] is True
    assert body["continuation_start"] == 0 and "continuation_end" not in body
    assert (extended.duration, extended.model_version, extended.seed) == (16, model, 3)


def test_continuing_forgets_the_old_clips_window() -> None:
    original = MusicRequest.parse(
        {
            "prompt": "jazz",
            "input_audio": CLIP,
            "continuation": True,
            "continuation_start": 2,
            "continuation_end": 6,
        }
    )
    extended = original.continuing("https://cdn.example.com/next.wav", duration=8, max_duration=30)
    assert (extended.continuation_start, extended.continuation_end) == (0, None)


def test_continuing_past_the_cap_is_refused_in_words() -> None:
    with pytest.raises(InvalidRequestError, match="duration must be between 1 and 30 seconds"):
        MusicRequest.from_options("jazz").continuing(CLIP, duration=31, max_duration=30)


def test_a_variation_fixes_the_seed_and_warms_the_temperature() -> None:
    original = MusicRequest.from_options("jazz", seed=7, model="large", top_k=10, temperature=0.7)
    varied = original.varied(99)
    assert (varied.seed, varied.temperature) == (99, 0.8)  # rounded: not 0.7999999999999999
    assert varied.model_copy(update={"seed": 7, "temperature": 0.7}) == original
    assert original.varied(99, step=0.5).temperature == 1.2


@pytest.mark.parametrize(
    ("temperature", "step", "expected"), [(4.95, 0.1, 4.85), (4.9, 0.1, 5.0), (5.0, 1.0, 4.0)]
)
def test_a_variation_turns_down_rather_than_pass_the_maximum(
    temperature: float, step: float, expected: float
) -> None:
    original = MusicRequest.from_options("jazz", temperature=temperature)
    assert original.varied(1, step=step).temperature == expected


def test_a_variation_is_validated_again() -> None:
    with pytest.raises(InvalidRequestError, match="seed must be between"):
        MusicRequest.from_options("jazz").varied(2**32)
    with pytest.raises(InvalidRequestError, match="temperature"):
        MusicRequest.from_options("jazz", temperature=5.0).varied(1, step=5.0)  # down to 0
    long = MusicRequest.from_options("jazz", duration=60, max_duration=60)
    assert long.varied(1).duration == 60  # accepted once, not stranded by today's cap
    with pytest.raises(InvalidRequestError, match="between 1 and 30 seconds"):
        long.varied(1, max_duration=30)
    with pytest.raises(ValueError, match="positive"):
        long.varied(1, step=0)


def data_uri_of_length(length: int) -> str:
    prefix = "data:audio/wav;base64,"
    return prefix + "A" * (length - len(prefix))


@pytest.mark.parametrize(
    "uri",
    [
        data_uri_of_length(MAX_DATA_URI_LENGTH),
        "https://api.replicate.com/v1/files/cneqzikepnug6xezperrr4z55o",
        "http://127.0.0.1:8765/v1/files/cneqzikepnug6xezperrr4z55o",  # the fake's file URLs
    ],
)
def test_continuing_takes_what_upload_audio_returns(uri: str) -> None:
    extended = MusicRequest.from_options("jazz").continuing(uri, duration=16, max_duration=30)
    assert extended.to_replicate_input()["input_audio"] == uri


def test_continuing_refuses_a_data_uri_past_the_limit() -> None:
    with pytest.raises(InvalidRequestError, match="at most 5 MB"):
        MusicRequest.from_options("jazz").continuing(
            data_uri_of_length(MAX_DATA_URI_LENGTH + 1), duration=16, max_duration=30
        )
