"""MusicRequest: every field, every cross-field rule, hostile input, the exact Replicate body."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.music.errors import InvalidRequestError
from bot.music.request import MAX_PROMPT_LENGTH, ModelVersion, MusicRequest


def parse(**fields: Any) -> MusicRequest:
    return MusicRequest.parse({"prompt": "warm lofi beat", **fields})


def rejection(**fields: Any) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        MusicRequest.parse({"prompt": "warm lofi beat", **fields})
    return caught.value.user_message


def test_defaults_match_the_seed_design() -> None:
    request = parse()
    assert request.duration == 8
    assert request.model_version is ModelVersion.STEREO_LARGE
    assert (request.temperature, request.top_k, request.top_p) == (1.0, 250, 0.0)
    assert request.classifier_free_guidance == 3
    assert request.output_format == "wav"
    assert request.normalization_strategy == "loudness"
    assert request.seed is None and request.input_audio is None and not request.continuation


# What meta/musicgen receives for `/music prompt:warm lofi beat` and nothing else.
DEFAULT_INPUT = {
    "prompt": "warm lofi beat",
    "model_version": "stereo-large",
    "duration": 8,
    "temperature": 1.0,
    "top_k": 250,
    "top_p": 0.0,
    "classifier_free_guidance": 3,
    "output_format": "wav",
    "normalization_strategy": "loudness",
}


def test_default_create_body_is_exact() -> None:
    assert parse().to_replicate_input() == DEFAULT_INPUT


def test_every_option_body_is_exact() -> None:
    request = parse(
        duration=20,
        model_version="melody-large",
        temperature=0.7,
        top_k=100,
        top_p=0.9,
        classifier_free_guidance=5,
        output_format="mp3",
        normalization_strategy="peak",
        seed=42,
        input_audio="https://cdn.example.com/clip.wav",
        continuation=True,
        continuation_start=2,
        continuation_end=6,
    )
    assert request.to_replicate_input() == {
        "prompt": "warm lofi beat",
        "model_version": "melody-large",
        "duration": 20,
        "temperature": 0.7,
        "top_k": 100,
        "top_p": 0.9,
        "classifier_free_guidance": 5,
        "output_format": "mp3",
        "normalization_strategy": "peak",
        "seed": 42,
        "input_audio": "https://cdn.example.com/clip.wav",
        "continuation": True,
        "continuation_start": 2,
        "continuation_end": 6,
    }


def test_model_selector_uses_the_models_own_key() -> None:
    body = parse(model_version="large").to_replicate_input()
    assert body["model_version"] == "large"
    assert "music_gen_model_version" not in body


def test_seed_is_sent_only_when_set() -> None:
    assert "seed" not in parse().to_replicate_input()
    assert parse(seed=0).to_replicate_input()["seed"] == 0


def test_prompt_is_stripped() -> None:
    assert parse(prompt="  jazz  ").prompt == "jazz"


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"prompt": ""}, "prompt can't be empty: describe the music you want."),
        ({"prompt": "   \t "}, "prompt can't be empty: describe the music you want."),
        ({"prompt": "x" * 5000}, "prompt must be at most 1000 characters long."),
        ({"prompt": "beat\x00drop"}, "prompt can't contain control characters."),
        ({"prompt": "beat\x1b[31m"}, "prompt can't contain control characters."),
        ({"prompt": 12}, "prompt must be text."),
        ({"duration": -5}, "duration must be between 1 and 30 seconds."),
        ({"duration": 0}, "duration must be between 1 and 30 seconds."),
        ({"duration": 100000}, "duration must be between 1 and 30 seconds."),
        ({"duration": 31}, "duration must be between 1 and 30 seconds."),
        ({"duration": 2.5}, "duration must be a whole number."),
        ({"duration": "long"}, "duration must be a whole number."),
        ({"model_version": "small"}, "model must be one of:"),
        ({"temperature": 0}, "temperature must be greater than 0 and at most 5.0."),
        ({"temperature": 6}, "temperature must be greater than 0 and at most 5.0."),
        ({"temperature": math.nan}, "temperature must be a real number."),
        ({"temperature": math.inf}, "temperature must be a real number."),
        ({"top_k": -1}, "top_k must be between 0 and 2048."),
        ({"top_p": 2}, "top_p must be between 0 and 1."),
        ({"top_p": -0.1}, "top_p must be between 0 and 1."),
        ({"top_p": -math.inf}, "top_p must be a real number."),
        ({"classifier_free_guidance": -1}, "guidance must be between 0 and 20."),
        ({"classifier_free_guidance": 99}, "guidance must be between 0 and 20."),
        ({"output_format": "flac"}, "output_format must be one of:"),
        ({"normalization_strategy": "loud"}, "normalization must be one of:"),
        ({"seed": -1}, "seed must be between 0 and 4294967295."),
        ({"seed": 2**40}, "seed must be between 0 and 4294967295."),
        ({"input_audio": "file:///etc/passwd"}, "audio must be an http(s) link"),
        ({"input_audio": "https://x/" + "a" * 3000}, "audio must be an http(s) link"),
        ({"music_gen_model_version": "large"}, "There's no option called"),
    ],
)
def test_each_rejection_is_a_sentence(fields: dict[str, Any], sentence: str) -> None:
    message = rejection(**fields)
    assert message.startswith(sentence)
    assert message.endswith(".")
    assert "pydantic" not in message and "Input should" not in message


INVISIBLE = [
    "\u200b",  # zero-width space
    "\u200c\u200d",  # zero-width non-joiner, joiner
    "\u2060",  # word joiner
    "\ufeff",  # byte-order mark
    "\u3164",  # Hangul filler
    "\u115f\u1160\uffa0",  # the other Hangul fillers
    "\u2800",  # braille blank
    "\u0301\u0308",  # combining marks with nothing to sit on
    "\u034f\ufe0f",  # grapheme joiner, variation selector
    "\u00ad",  # soft hyphen
    "\u2028\u200b\u2029",  # line and paragraph separators around a zero-width space
    "\U000e0041\U000e007f",  # tag characters
    "\u202e\u2066",  # bidi controls only, which are stripped
    " \u200b \u3164 \u2800 ",
]


@pytest.mark.parametrize("prompt", INVISIBLE)
def test_a_prompt_with_nothing_visible_is_refused(prompt: str) -> None:
    assert rejection(prompt=prompt) == (
        "prompt must contain some visible text: describe the music you want."
    )


def test_invisible_characters_inside_visible_text_are_kept() -> None:
    assert parse(prompt="lo\u200dfi e\u0301te\u0301").prompt == "lo\u200dfi e\u0301te\u0301"


BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
        "\u200e", "\u200f", "\u061c"]  # fmt: skip


@pytest.mark.parametrize("control", BIDI)
def test_bidi_controls_are_stripped_before_anything_sees_the_prompt(control: str) -> None:
    request = parse(prompt=f"{control} warm {control}lofi{control} beat {control}")
    assert request.prompt == "warm lofi beat"
    assert request.to_replicate_input()["prompt"] == "warm lofi beat"


def test_a_reversed_prompt_cannot_reorder_the_embed() -> None:
    assert parse(prompt="jazz \u202egnp.exe\u202c trio").prompt == "jazz gnp.exe trio"


def test_duration_cap_follows_the_setting() -> None:
    assert MusicRequest.parse({"prompt": "x", "duration": 60}, max_duration=60).duration == 60
    with pytest.raises(InvalidRequestError, match="between 1 and 10 seconds"):
        MusicRequest.parse({"prompt": "x", "duration": 11}, max_duration=10)


def test_prompt_limit_is_inclusive() -> None:
    assert len(parse(prompt="y" * MAX_PROMPT_LENGTH).prompt) == MAX_PROMPT_LENGTH


# Cross-field rules, as the model's predict.py enforces them (after billing) ----------------


def test_continuation_needs_input_audio() -> None:
    assert rejection(continuation=True).startswith("continuation needs an audio clip")


@pytest.mark.parametrize("model", ["stereo-large", "large"])
def test_non_melody_models_need_continuation_with_audio(model: str) -> None:
    message = rejection(model_version=model, input_audio="https://x/clip.wav")
    assert f"the {model} model can't follow a melody" in message


@pytest.mark.parametrize("model", ["stereo-large", "large"])
def test_non_melody_models_may_continue_audio(model: str) -> None:
    request = parse(model_version=model, input_audio="https://x/c.wav", continuation=True)
    assert request.to_replicate_input()["continuation"] is True


@pytest.mark.parametrize("model", ["stereo-melody-large", "melody-large"])
def test_melody_models_follow_audio(model: str) -> None:
    body = parse(model_version=model, input_audio="https://x/m.wav").to_replicate_input()
    assert body["input_audio"] == "https://x/m.wav" and body["continuation"] is False


def test_multi_band_diffusion_only_for_mono_models() -> None:
    assert "mono models" in rejection(model_version="stereo-large", multi_band_diffusion=True)
    body = parse(model_version="large", multi_band_diffusion=True).to_replicate_input()
    assert body["multi_band_diffusion"] is True


def test_continuation_window_rules() -> None:
    audio = {"input_audio": "https://x/c.wav", "model_version": "melody-large"}
    assert "only apply with continuation" in rejection(**audio, continuation_start=2)
    message = rejection(**audio, continuation=True, continuation_start=5, continuation_end=5)
    assert message == "continuation_end must come after continuation_start."


def test_data_uri_audio_is_accepted_for_local_files() -> None:
    uri = "data:audio/wav;base64,UklGRg=="
    assert parse(model_version="melody-large", input_audio=uri).input_audio == uri


def test_request_is_immutable() -> None:
    request = parse()
    with pytest.raises(ValueError, match="frozen"):
        request.duration = 12  # type: ignore[misc]


# Property-based: whatever arrives, the outcome is a valid request or one clean sentence ------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "duration",
                "model_version",
                "temperature",
                "top_k",
                "top_p",
                "classifier_free_guidance",
                "output_format",
                "normalization_strategy",
                "seed",
                "input_audio",
                "continuation",
            ]
        ),
        anything,
    )
)
def test_hostile_input_never_escapes_as_anything_but_a_sentence(data: dict[str, Any]) -> None:
    try:
        request = MusicRequest.parse(data)
    except InvalidRequestError as exc:
        assert exc.user_message.endswith(".")
        assert "\n" not in exc.user_message
        assert len(exc.user_message) < 300
        return
    body = request.to_replicate_input()
    assert 1 <= body["duration"] <= 30
    assert 0 <= body["top_p"] <= 1
    assert math.isfinite(body["temperature"]) and body["temperature"] > 0
    assert body["prompt"] == body["prompt"].strip() and body["prompt"]


BIDI_CODES = {ord(ch) for ch in BIDI}
BLANK = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def shows_something(text: str) -> bool:
    """A letter, digit, punctuation or symbol that isn't drawn blank."""
    return any(unicodedata.category(ch)[0] in "LNPS" and ch not in BLANK for ch in text)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=MAX_PROMPT_LENGTH))
def test_any_printable_prompt_round_trips(prompt: str) -> None:
    cleaned = "".join(ch for ch in prompt if ord(ch) not in BIDI_CODES).strip()
    has_control = any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in cleaned)
    if has_control or not shows_something(cleaned):
        with pytest.raises(InvalidRequestError):
            MusicRequest.parse({"prompt": prompt})
        return
    assert MusicRequest.parse({"prompt": prompt}).to_replicate_input()["prompt"] == cleaned


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(categories=["Cf", "Mn", "Me", "Zs", "Zl", "Zp"]), min_size=1))
def test_no_prompt_of_invisible_characters_gets_through(prompt: str) -> None:
    with pytest.raises(InvalidRequestError):
        MusicRequest.parse({"prompt": prompt})
