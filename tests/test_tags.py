"""Tests for bot.music.tags: what a delivered file says about how it was made."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from bot.music.request import MAX_PROMPT_LENGTH
from bot.music.tags import SOFTWARE, TrackTags, read_tags, tag_audio, tag_room
from tests.test_audio import encode, signal

TAGS = TrackTags(
    prompt="lofi beats with a café piano",
    seed=42,
    model="stereo-melody-large",
    duration_seconds=8.0,
    extended_from="job-17",
)
FORMATS = {
    "wav": ("WAV", "PCM_16", 32000),
    "wav-float": ("WAV", "FLOAT", 32000),
    "flac": ("FLAC", "PCM_16", 32000),
    "ogg-vorbis": ("OGG", "VORBIS", 32000),
    "ogg-opus": ("OGG", "OPUS", 48000),
    "mp3": ("MP3", "MPEG_LAYER_III", 32000),
}


def audio_file(kind: str, seconds: float = 2.0) -> tuple[bytes, str]:
    format, subtype, samplerate = FORMATS[kind]
    return encode(signal(seconds, samplerate), samplerate, format, subtype), kind.split("-")[0]


def samples(data: bytes) -> NDArray[Any]:
    decoded: NDArray[Any] = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
    return decoded


def top_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A RIFF file's top-level chunks as (id, payload), checking sizes and pad bytes."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    chunks, offset = [], 12
    while offset < len(data):
        key, size = struct.unpack_from("<4sI", data, offset)
        chunks.append((key, data[offset + 8 : offset + 8 + size]))
        offset += 8 + size + size % 2
    assert offset == len(data)
    return chunks


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_tags_read_back_and_the_audio_decodes_to_the_same_samples(kind: str) -> None:
    data, extension = audio_file(kind)

    tagged = tag_audio(data, extension, TAGS)

    assert tagged != data
    assert read_tags(tagged, extension) == {
        "title": "lofi beats with a café piano",
        "comment": "made with jambot / MusicGen (stereo-melody-large), extended from job-17",
        "seed": "42",
        "model": "stereo-melody-large",
        "duration": "8",
        "extended_from": "job-17",
    }
    assert sf.info(io.BytesIO(tagged)).frames == sf.info(io.BytesIO(data)).frames
    np.testing.assert_array_equal(samples(tagged), samples(data))
    assert len(tagged) - len(data) <= tag_room(TAGS)


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_other_readers_see_the_title_and_comment(kind: str) -> None:
    """libsndfile reads Vorbis comments and ID3 in MP3, but only LIST/INFO in a WAV."""
    data, extension = audio_file(kind)

    with sf.SoundFile(io.BytesIO(tag_audio(data, extension, TAGS))) as tagged:
        assert tagged.title == TAGS.prompt
        assert tagged.comment == TAGS.comment
        if extension == "wav":
            assert tagged.software == SOFTWARE


def test_a_wav_gets_one_small_info_chunk_after_its_own_chunks() -> None:
    data, _ = audio_file("wav")

    chunks = top_chunks(tag_audio(data, "wav", TAGS))

    assert [key for key, _ in chunks] == [b"fmt ", b"data", b"id3 ", b"LIST"]
    assert chunks[:2] == top_chunks(data)
    info = chunks[3][1]
    assert info[:4] == b"INFO"
    assert top_chunks(b"RIFF" + struct.pack("<I", len(info)) + b"WAVE" + info[4:]) == [
        (b"INAM", TAGS.prompt.encode() + b"\0"),
        (b"ICMT", TAGS.comment.encode() + b"\0"),
        (b"ISFT", b"jambot\0"),
    ]


def test_tagging_again_replaces_the_tags_and_keeps_odd_chunks_whole() -> None:
    data, _ = audio_file("wav")
    # An odd-sized chunk before the audio, padded to an even offset as RIFF wants.
    odd = b"junk" + struct.pack("<I", 3) + b"abc\0"
    form = data[12:]
    data = b"RIFF" + struct.pack("<I", 4 + len(odd) + len(form)) + b"WAVE" + odd + form
    later = TrackTags(prompt="ambient", seed=None, model="large", duration_seconds=30)

    twice = tag_audio(tag_audio(data, "wav", TAGS), "wav", later)

    chunks = top_chunks(twice)
    assert [key for key, _ in chunks] == [b"junk", b"fmt ", b"data", b"id3 ", b"LIST"]
    assert chunks[0] == (b"junk", b"abc")
    assert read_tags(twice, "wav") == {
        "title": "ambient",
        "comment": "made with jambot / MusicGen (large)",
        "model": "large",
        "duration": "30",
    }
    np.testing.assert_array_equal(samples(twice), samples(data))


@pytest.mark.parametrize("kind", ["flac", "ogg-vorbis", "mp3"])
def test_a_tag_left_out_the_second_time_is_gone(kind: str) -> None:
    data, extension = audio_file(kind)
    later = TrackTags(prompt="ambient", seed=None, model="large", duration_seconds=30)

    tags = read_tags(tag_audio(tag_audio(data, extension, TAGS), extension, later), extension)

    assert tags["title"] == "ambient"
    assert "seed" not in tags and "extended_from" not in tags


@pytest.mark.parametrize(
    ("data", "extension"),
    [
        (audio_file("wav")[0], "aiff"),
        (b"<!DOCTYPE html><html></html>\n" * 20, "wav"),
        (b"<!DOCTYPE html><html></html>\n" * 20, "ogg"),
        (audio_file("flac")[0], "mp3"),
        (audio_file("wav")[0][:-1001], "wav"),  # the data chunk runs past the end
        (b"", "flac"),
    ],
    ids=["unknown-format", "html-wav", "html-ogg", "flac-named-mp3", "truncated-wav", "empty"],
)
def test_what_cannot_be_tagged_comes_back_unchanged(data: bytes, extension: str) -> None:
    assert tag_audio(data, extension, TAGS) is data
    assert read_tags(data, extension) == {}


def test_untagged_audio_reads_as_no_tags() -> None:
    assert read_tags(audio_file("wav")[0], "wav") == {}
    assert read_tags(audio_file("mp3")[0], "mp3") == {}


@settings(max_examples=20, deadline=None)
@given(
    prompt=st.text(
        st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_PROMPT_LENGTH
    ),
    seed=st.none() | st.integers(0, 2**31),
)
def test_tags_never_take_more_room_than_tag_room_says(prompt: str, seed: int | None) -> None:
    tags = TrackTags(prompt=prompt, seed=seed, model="melody-large", duration_seconds=12.5)
    for kind in ("wav", "mp3", "ogg-opus"):
        data, extension = audio_file(kind, seconds=0.5)

        tagged = tag_audio(data, extension, tags)

        assert read_tags(tagged, extension)["title"] == prompt
        assert len(tagged) - len(data) <= tag_room(tags)
