"""Tests for bot.music.audio: probing, checking, fitting under an upload limit, waveforms."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from bot.music import audio
from bot.music.audio import (
    AudioError,
    AudioInfo,
    ExpectedAudio,
    UnexpectedAudioError,
    check_plausible,
    fit_to_limit,
    probe,
    probe_clip,
    stitch,
    tail_clip,
    waveform_png,
)
from bot.music.request import AudioFormat, ModelVersion, MusicRequest

# How lossy each output is; the ladder only ever moves right as limits shrink.
LOSSINESS = {"wav": 0, "flac": 1, "ogg": 2, "mp3": 3}


def signal(seconds: float, samplerate: int = 32000, channels: int = 2, seed: int = 0) -> Any:
    """A chord plus noise, in [-1, 1]: tonal enough to sound like something, noisy enough that
    no codec squeezes it to nothing."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    columns = []
    for channel in range(channels):
        tone = sum(0.15 * np.sin(2 * np.pi * f * t + channel) for f in (220.0, 277.2, 329.6))
        columns.append(tone + 0.05 * rng.standard_normal(t.size))
    return np.clip(np.stack(columns, axis=1), -1.0, 1.0)


def encode(samples: Any, samplerate: int, format: str, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, samplerate, format=format, subtype=subtype)
    return out.getvalue()


@cache
def wav(seconds: float = 3.0, samplerate: int = 32000, channels: int = 2) -> bytes:
    return encode(signal(seconds, samplerate, channels), samplerate, "WAV", "PCM_16")


def crafted_wav(channels: int, samplerate: int, frames: int) -> bytes:
    """A well-formed 16-bit PCM WAV with whatever header values a hostile server likes,
    and noise for samples."""
    block = channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, samplerate, samplerate * block, block, 16)
    body = np.random.default_rng(0).integers(-3000, 3000, frames * channels, dtype=np.int16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", body.nbytes) + body.tobytes()
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


# Headers that crash libvorbis's encoder (a segfault) when fit_to_limit gets to the Vorbis rung.
CRASHING_HEADERS = {
    "256-channels": (256, 32000, 2000),
    "1-MHz": (2, 1_000_000, 32000),
}


@cache
def silent_flac(minutes: int = 10, channels: int = 8) -> bytes:
    """Ten minutes of 8-channel silence: 150 KB of FLAC, 600 MB as float32."""
    out = io.BytesIO()
    second = np.zeros((32000, channels), dtype=np.int16)
    with sf.SoundFile(out, "w", 32000, channels, format="FLAC", subtype="PCM_16") as sink:
        for _ in range(minutes * 60):
            sink.write(second)
    return out.getvalue()


def decode(data: bytes) -> tuple[NDArray[Any], int]:
    samples, samplerate = sf.read(io.BytesIO(data), always_2d=True, dtype="int16")
    return samples, int(samplerate)


# --- probe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format", "subtype", "extension", "channels", "tolerance"),
    [
        ("WAV", "PCM_16", "wav", 2, 0.0),
        ("WAV", "PCM_24", "wav", 1, 0.0),
        ("FLAC", "PCM_16", "flac", 2, 0.0),
        ("OGG", "VORBIS", "ogg", 2, 0.01),
        ("MP3", "MPEG_LAYER_III", "mp3", 2, 0.1),
        ("MP3", "MPEG_LAYER_III", "mp3", 1, 0.1),
    ],
)
def test_probe_reads_format_rate_channels_and_duration(
    format: str, subtype: str, extension: str, channels: int, tolerance: float
) -> None:
    data = encode(signal(2.5, 32000, channels), 32000, format, subtype)

    info = probe(data)

    assert info.format == extension
    assert info.samplerate == 32000
    assert info.channels == channels
    assert info.duration_seconds == pytest.approx(2.5, abs=tolerance)


def test_probe_reads_other_sample_rates() -> None:
    info = probe(encode(signal(1.0, 48000, 1), 48000, "WAV", "PCM_16"))

    assert info == AudioInfo(format="wav", samplerate=48000, channels=1, frames=48000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not audio at all " * 40,
        bytes(range(256)) * 16,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a WAV header cut short
        b"<html><body>502 Bad Gateway</body></html>",
    ],
    ids=["empty", "text", "binary", "truncated-wav", "html"],
)
def test_probe_rejects_what_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioError):
        probe(data)


def test_probe_rejects_audio_without_frames() -> None:
    with pytest.raises(AudioError, match="no frames"):
        probe(encode(np.zeros((0, 2)), 32000, "WAV", "PCM_16"))


def test_probe_clip_reports_what_a_clip_holds() -> None:
    info = probe_clip(encode(signal(3.0, 44100, 1), 44100, "FLAC"))

    assert info == AudioInfo(format="flac", samplerate=44100, channels=1, frames=3 * 44100)


@pytest.mark.parametrize(
    "data",
    [b"just some text, saved as clip.wav\n" * 50, b"<!DOCTYPE html><html>Bad Gateway</html>"],
    ids=["text", "html"],
)
def test_probe_clip_refuses_what_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioError, match="not decodable"):
        probe_clip(data)


def test_probe_clip_refuses_a_header_whose_samples_do_not_decode() -> None:
    flac = encode(signal(1.0), 32000, "FLAC")
    # The STREAMINFO header intact, the frames after it zeroed.
    broken = flac[:200] + bytes(len(flac) - 200)

    assert probe(broken).frames == 32000  # the header alone looks fine
    with pytest.raises(AudioError, match=r"doesn't decode|no frames"):
        probe_clip(broken)


@pytest.mark.parametrize(
    ("channels", "samplerate", "frames", "complaint"),
    [
        (256, 32000, 32000, "256 channels"),
        (2, 1_000_000, 32000, "1000000 Hz"),
        (1, 4000, 4000, "4000 Hz"),
        (2, 48000, 48000 * 7200, "7200 s"),
    ],
)
def test_implausible_headers_are_refused(
    channels: int, samplerate: int, frames: int, complaint: str
) -> None:
    info = AudioInfo(format="wav", samplerate=samplerate, channels=channels, frames=frames)

    with pytest.raises(UnexpectedAudioError, match=f"implausible audio: .*{complaint}") as caught:
        check_plausible(info)
    assert caught.value.info == info


def test_plausible_headers_pass() -> None:
    for channels, samplerate in [(1, 8000), (2, 32000), (8, 192_000)]:
        check_plausible(AudioInfo("flac", samplerate, channels, samplerate * 600))


# --- ExpectedAudio -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "output_format", "channels"),
    [
        (ModelVersion.STEREO_LARGE, AudioFormat.WAV, 2),
        (ModelVersion.STEREO_MELODY_LARGE, AudioFormat.MP3, 2),
        (ModelVersion.LARGE, AudioFormat.MP3, 1),
        (ModelVersion.MELODY_LARGE, AudioFormat.WAV, 1),
    ],
)
def test_expected_audio_follows_the_request(
    model: ModelVersion, output_format: AudioFormat, channels: int
) -> None:
    request = MusicRequest(
        prompt="lofi", duration=20, model_version=model, output_format=output_format
    )

    expected = ExpectedAudio.for_request(request)

    assert expected == ExpectedAudio(channels=channels, seconds=20.0, format=output_format)
    assert expected.tolerance_seconds == 2.0


def test_mp3_may_come_at_the_common_mpeg_rates_and_wav_only_at_32_khz() -> None:
    mp3 = ExpectedAudio(channels=2, seconds=8, format=AudioFormat.MP3)
    wav_ = ExpectedAudio(channels=2, seconds=8, format=AudioFormat.WAV)

    for rate in (32000, 44100, 48000):
        mp3.check(AudioInfo("mp3", rate, 2, rate * 8))
    wav_.check(AudioInfo("wav", 32000, 2, 32000 * 8))
    with pytest.raises(UnexpectedAudioError, match="wrong sample rate"):
        wav_.check(AudioInfo("wav", 44100, 2, 44100 * 8))
    with pytest.raises(UnexpectedAudioError, match="wrong sample rate"):
        mp3.check(AudioInfo("mp3", 22050, 2, 22050 * 8))


@pytest.mark.parametrize(
    ("seconds", "frames", "fits"),
    [
        (8, 32000 * 7, True),  # the margin is at least a second
        (8, 32000 * 9, True),
        (8, 32000 * 7 - 1, False),
        (8, 32000 * 9 + 1, False),
        (30, 32000 * 27, True),  # and otherwise 10%
        (30, 32000 * 34, False),
    ],
)
def test_the_duration_must_be_near_the_request(seconds: int, frames: int, fits: bool) -> None:
    expected = ExpectedAudio(channels=1, seconds=seconds, format=AudioFormat.WAV)
    info = AudioInfo("wav", 32000, 1, frames)

    if fits:
        expected.check(info)
    else:
        with pytest.raises(UnexpectedAudioError, match="wrong duration"):
            expected.check(info)


def test_a_mismatch_says_what_was_expected_and_what_came() -> None:
    expected = ExpectedAudio(channels=2, seconds=8, format=AudioFormat.WAV)
    info = AudioInfo("flac", 32000, 8, 32000 * 600)

    with pytest.raises(UnexpectedAudioError) as caught:
        expected.check(info)

    message = str(caught.value)
    assert message.startswith("wrong format, channels, duration: ")
    assert "expected WAV, 2 channel(s), 32000 Hz, 8 s ± 1 s" in message
    assert "got FLAC, 8 channel(s), 32000 Hz, 600.0 s" in message
    assert caught.value.info == info


# --- fit_to_limit --------------------------------------------------------------------------


@pytest.mark.parametrize("slack", [0, 1, 10_000_000])
def test_fit_returns_the_original_untouched_when_it_fits(slack: int) -> None:
    data = wav()

    fitted = fit_to_limit(data, len(data) + slack)

    assert fitted is not None
    assert fitted.data is data
    assert (fitted.extension, fitted.description, fitted.transcoded) == ("wav", "WAV", False)


def test_fit_describes_an_untouched_ogg_and_mp3() -> None:
    samples = signal(1.0)
    ogg = encode(samples, 32000, "OGG", "VORBIS")
    mp3 = encode(samples, 32000, "MP3", "MPEG_LAYER_III")

    fitted_ogg = fit_to_limit(ogg, len(ogg))
    fitted_mp3 = fit_to_limit(mp3, len(mp3))

    assert fitted_ogg is not None and fitted_mp3 is not None
    assert (fitted_ogg.extension, fitted_ogg.description) == ("ogg", "Ogg Vorbis")
    assert (fitted_mp3.extension, fitted_mp3.description) == ("mp3", "MP3")


def test_a_mild_limit_gets_lossless_flac() -> None:
    data = wav()
    original, _ = decode(data)

    fitted = fit_to_limit(data, len(data) - 1)

    assert fitted is not None
    assert (fitted.extension, fitted.description, fitted.transcoded) == ("flac", "FLAC", True)
    assert len(fitted.data) < len(data)
    samples, samplerate = decode(fitted.data)
    assert samplerate == 32000
    np.testing.assert_array_equal(samples, original)  # lossless, bit for bit


def test_flac_keeps_24_bit_sources_whole() -> None:
    data = encode(signal(2.0, 32000, 1), 32000, "WAV", "PCM_24")
    original, _ = sf.read(io.BytesIO(data), dtype="int32")

    fitted = fit_to_limit(data, len(data) - 1)

    assert fitted is not None and fitted.extension == "flac"
    assert sf.info(io.BytesIO(fitted.data)).subtype == "PCM_24"
    samples, _ = sf.read(io.BytesIO(fitted.data), dtype="int32")
    np.testing.assert_array_equal(samples, original)


@pytest.mark.parametrize(
    ("fraction", "extension", "description"),
    [
        (0.95, "flac", "FLAC"),
        (0.5, "ogg", "Ogg Vorbis ~"),
        (0.1, "ogg", "Ogg Vorbis ~"),
        (0.045, "mp3", "MP3 "),
    ],
)
def test_fit_shrinks_to_the_limit_keeping_duration_and_channels(
    fraction: float, extension: str, description: str
) -> None:
    data = wav()
    limit = int(len(data) * fraction)

    fitted = fit_to_limit(data, limit)

    assert fitted is not None
    assert fitted.transcoded
    assert fitted.extension == extension
    assert fitted.description.startswith(description)
    assert len(fitted.data) <= limit
    info = probe(fitted.data)
    assert info.format == extension
    assert (info.samplerate, info.channels) == (32000, 2)
    samples, _ = decode(fitted.data)  # decodes all the way through, not just the header
    tolerance = 0.15 if extension == "mp3" else 0.1  # MP3 pads to whole frames
    assert len(samples) / 32000 == pytest.approx(3.0, abs=tolerance)


def test_the_format_gets_lossier_as_the_limit_shrinks() -> None:
    data = wav(2.0)
    results = [fit_to_limit(data, int(len(data) * f)) for f in (1.0, 0.9, 0.4, 0.15, 0.05)]

    assert all(result is not None for result in results)
    fitted = [result for result in results if result is not None]
    ranks = [LOSSINESS[result.extension] for result in fitted]
    assert ranks == sorted(ranks)
    assert ranks[0] == 0 and ranks[-1] == 3
    sizes = [len(result.data) for result in fitted]
    assert sizes == sorted(sizes, reverse=True)


def test_an_impossible_limit_returns_none() -> None:
    assert fit_to_limit(wav(10.0), 1000) is None
    assert fit_to_limit(wav(), 0) is None


def test_fit_rejects_what_is_not_audio() -> None:
    with pytest.raises(AudioError):
        fit_to_limit(b"definitely not audio" * 100, 10)


@pytest.mark.parametrize("header", sorted(CRASHING_HEADERS))
def test_fit_refuses_crashing_headers_before_encoding(header: str, tmp_path: Path) -> None:
    # In a throwaway interpreter: if the refusal were missing, the encoder would segfault, and
    # that must not take pytest down with it.
    path = tmp_path / "crafted.wav"
    path.write_bytes(crafted_wav(*CRASHING_HEADERS[header]))
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from bot.music.audio import UnexpectedAudioError, fit_to_limit
        data = Path(sys.argv[1]).read_bytes()
        try:
            fit_to_limit(data, len(data) // 3)
        except UnexpectedAudioError as exc:
            print("refused:", exc)
        """
    )

    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: implausible audio: ")


def test_opus_stands_in_for_vorbis_at_rates_opus_accepts() -> None:
    data = encode(signal(2.0, 48000, 2), 48000, "WAV", "PCM_16")
    limit = len(data) // 6

    fitted = fit_to_limit(data, limit)

    assert fitted is not None
    assert fitted.extension == "ogg" and fitted.description.startswith("Ogg Opus ~")
    assert len(fitted.data) <= limit
    info = probe(fitted.data)
    assert (info.samplerate, info.channels) == (48000, 2)
    assert info.duration_seconds == pytest.approx(2.0, abs=0.1)


def test_an_mp3_that_is_too_big_is_reencoded_smaller() -> None:
    data = encode(signal(3.0), 32000, "MP3", "MPEG_LAYER_III")
    limit = len(data) * 2 // 3

    fitted = fit_to_limit(data, limit)

    assert fitted is not None and fitted.transcoded
    assert fitted.extension in {"ogg", "mp3"}  # FLAC of decoded MP3 is far bigger than the MP3
    assert len(fitted.data) <= limit
    assert probe(fitted.data).duration_seconds == pytest.approx(3.0, abs=0.15)


def test_rungs_that_clearly_cannot_fit_are_never_encoded_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = wav(12.0, channels=1)
    frames = probe(data).frames
    full_encodes: list[str] = []
    real_encode = audio._encode

    def counting_encode(pcm: Any, samplerate: int, rung: Any) -> bytes:
        if len(pcm) == frames:
            full_encodes.append(rung.name)
        return real_encode(pcm, samplerate, rung)

    monkeypatch.setattr(audio, "_encode", counting_encode)

    fitted = fit_to_limit(data, len(data) // 8)

    assert fitted is not None and fitted.extension == "ogg"
    assert len(full_encodes) <= 2, full_encodes  # not FLAC, not every Vorbis level on the way


@settings(max_examples=8, deadline=None)
@given(limit=st.integers(min_value=0, max_value=len(wav(1.0, channels=1)) + 1000))
def test_a_fit_never_exceeds_the_limit(limit: int) -> None:
    data = wav(1.0, channels=1)

    fitted = fit_to_limit(data, limit)

    if fitted is None:
        return
    assert len(fitted.data) <= limit
    assert fitted.transcoded == (fitted.data is not data)
    info = probe(fitted.data)
    assert (info.samplerate, info.channels) == (32000, 1)


# --- waveform_png --------------------------------------------------------------------------


def painted(png: bytes) -> int:
    """How many pixels of the picture are not fully transparent."""
    with Image.open(io.BytesIO(png)) as image:
        alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    return int(np.count_nonzero(alpha))


@pytest.mark.parametrize(("width", "height"), [(800, 160), (300, 48), (1, 1)])
def test_waveform_is_a_png_of_the_requested_size(width: int, height: int) -> None:
    png = waveform_png(wav(), width=width, height=height)

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == (width, height)
        image.load()


def test_waveform_of_silence_is_a_flat_line_and_of_a_loud_signal_is_not() -> None:
    silence = encode(np.zeros((32000, 2)), 32000, "WAV", "PCM_16")
    loud = wav()

    silent_png = waveform_png(silence)
    loud_png = waveform_png(loud)

    assert silent_png != loud_png
    assert painted(silent_png) == 800  # one pixel per column
    assert painted(loud_png) > 800 * 20


def test_waveform_handles_fewer_samples_than_columns_and_compressed_input() -> None:
    short = encode(signal(0.005), 32000, "WAV", "PCM_16")  # 160 frames for 800 columns
    mp3 = encode(signal(1.0), 32000, "MP3", "MPEG_LAYER_III")

    assert painted(waveform_png(short)) >= 800
    assert painted(waveform_png(mp3)) > 800


def test_waveform_reads_in_blocks_so_memory_stays_flat() -> None:
    data = silent_flac()  # decoded at once as float32, this would be 600 MB
    assert probe(data).duration_seconds == 600

    tracemalloc.start()
    try:
        png = waveform_png(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MB"
    assert painted(png) == 800  # silence: a flat line


@pytest.mark.parametrize(
    ("seconds", "width"), [(7.3, 799), (0.005, 800), (2.0, 1)], ids=["blocks", "short", "one"]
)
def test_waveform_columns_match_a_whole_file_reading(seconds: float, width: int) -> None:
    data = encode(signal(seconds, 32000, 2), 32000, "WAV", "FLOAT")
    samples, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32)
    # Column c covers frames [c * n // width, (c + 1) * n // width), or the frame at its edge.
    edges = np.arange(width) * len(mono) // width

    low, high = audio._column_extremes(data, probe(data), width)

    np.testing.assert_array_equal(low, np.minimum.reduceat(mono, edges))
    np.testing.assert_array_equal(high, np.maximum.reduceat(mono, edges))


def test_waveform_rejects_bad_input() -> None:
    with pytest.raises(AudioError):
        waveform_png(b"")
    with pytest.raises(ValueError):
        waveform_png(wav(), width=0)


# --- tail_clip and stitch ------------------------------------------------------------------

RATE = 32000


def sine(start: int, frames: int, samplerate: int = RATE, channels: int = 2) -> NDArray[np.int16]:
    """Frames `start`..`start + frames` of one endless 440 Hz sine, as 16-bit samples: pieces
    of it join without a seam, as a continuation that renders its prompt perfectly would."""
    t = (np.arange(frames) + start) / samplerate
    wave = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    return np.repeat(wave[:, np.newaxis], channels, axis=1)


def pcm_wav(samples: NDArray[Any], samplerate: int = RATE) -> bytes:
    return encode(samples, samplerate, "WAV", "PCM_16")


def jumps(samples: NDArray[Any]) -> NDArray[np.int64]:
    """How far each sample is from the one before, loudest channel."""
    result: NDArray[np.int64] = np.abs(np.diff(samples.astype(np.int64), axis=0)).max(axis=1)
    return result


@pytest.mark.parametrize(
    ("seconds", "max_seconds", "clip_seconds"),
    [(10.0, 4.0, 4.0), (3.0, 4.0, 3.0), (3.5, 4.0, 3.0), (0.5, 4.0, 0.5), (10.0, 4.7, 4.0)],
)
def test_tail_clip_is_the_last_whole_seconds(
    seconds: float, max_seconds: float, clip_seconds: float
) -> None:
    track = sine(0, int(seconds * RATE))

    clip = tail_clip(pcm_wav(track), max_seconds)

    assert (clip.clip_seconds, clip.total_seconds) == (clip_seconds, seconds)
    assert (clip.samplerate, clip.channels) == (RATE, 2)
    assert sf.info(io.BytesIO(clip.wav)).subtype == "PCM_16"
    got, _ = decode(clip.wav)
    np.testing.assert_array_equal(got, track[len(track) - int(clip_seconds * RATE) :])


@pytest.mark.parametrize(
    ("format", "subtype"), [("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
def test_tail_clip_of_a_compressed_track_is_16_bit_wav(format: str, subtype: str) -> None:
    data = encode(signal(6.0, RATE, 1), RATE, format, subtype)

    clip = tail_clip(data, 2)

    info = sf.info(io.BytesIO(clip.wav))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", RATE, 1)
    assert info.frames == 2 * RATE and clip.clip_seconds == 2.0
    assert clip.total_seconds == pytest.approx(6.0, abs=0.1)


def test_tail_clip_keeps_only_the_tail_in_memory() -> None:
    data = pcm_wav(sine(0, 60 * RATE))  # 7.7 MB of samples

    tracemalloc.start()
    try:
        clip = tail_clip(data, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert clip.clip_seconds == 2.0
    assert peak < 2 * 1024 * 1024


def test_tail_clip_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        tail_clip(wav(), 0.5)
    with pytest.raises(AudioError, match="not decodable audio"):
        tail_clip(b"<html></html>" * 50, 4)
    with pytest.raises(UnexpectedAudioError, match="implausible"):
        tail_clip(crafted_wav(*CRASHING_HEADERS["1-MHz"]), 4)


def expected_wav(seconds: float, channels: int = 2) -> ExpectedAudio:
    return ExpectedAudio(channels=channels, seconds=seconds, format=AudioFormat.WAV)


def test_stitch_keeps_the_original_and_joins_without_a_seam() -> None:
    original = sine(0, 10 * RATE)
    output = sine(6 * RATE, 12 * RATE)  # a 4 s prompt (the original's 6..10 s), 8 s new

    stitched, rate = decode(stitch(pcm_wav(original), pcm_wav(output), 4, expected_wav(12)))

    assert rate == RATE and len(stitched) == 10 * RATE + 12 * RATE - 4 * RATE
    fade = int(audio.CROSSFADE_SECONDS * RATE)
    np.testing.assert_array_equal(stitched[: 10 * RATE - fade], original[:-fade])
    np.testing.assert_array_equal(stitched[10 * RATE :], output[4 * RATE :])
    join = jumps(stitched[10 * RATE - 2 * fade : 10 * RATE + fade])
    assert join.max() <= jumps(stitched[: 10 * RATE - 2 * fade]).max()
    # Alike sides sum to the one sine, not a 3 dB swell.
    assert np.abs(stitched.astype(np.int64) - sine(0, 18 * RATE)).max() <= 1


def test_a_rendition_out_of_step_with_the_original_fades_in_rather_than_clicks() -> None:
    original = sine(0, 4 * RATE)
    quarter = RATE // 440 // 4  # the rendition runs a quarter period ahead: a cut would click
    output = sine(2 * RATE + quarter, 6 * RATE)

    stitched, _ = decode(stitch(pcm_wav(original), pcm_wav(output), 2, expected_wav(6)))

    elsewhere = jumps(stitched[: 3 * RATE]).max()
    assert jumps(stitched[3 * RATE :]).max() <= 1.05 * elsewhere
    hard_cut = np.concatenate([original, output[2 * RATE :]])
    assert jumps(hard_cut).max() > 5 * elsewhere


def test_stitch_keeps_unrelated_sides_equally_loud_through_the_join() -> None:
    rng = np.random.default_rng(3)
    original = rng.normal(0, 3000, (4 * RATE, 2)).astype(np.int16)
    output = rng.normal(0, 3000, (6 * RATE, 2)).astype(np.int16)

    stitched, _ = decode(stitch(pcm_wav(original), pcm_wav(output), 2, expected_wav(6)))

    fade = int(audio.CROSSFADE_SECONDS * RATE)
    middle = stitched[4 * RATE - fade // 2 - 400 : 4 * RATE - fade // 2 + 400]
    ratio = np.sqrt(np.mean(middle.astype(np.float64) ** 2)) / 3000
    assert 20 * np.log10(ratio) == pytest.approx(0.0, abs=1.0)


def test_stitch_converts_an_output_of_another_rate_and_channel_count() -> None:
    original = sine(0, 5 * RATE)
    output = encode(sine(2 * 48000, 8 * 48000, 48000, 1), 48000, "MP3", "MPEG_LAYER_III")
    expected = ExpectedAudio(channels=1, seconds=8, format=AudioFormat.MP3)
    decoded_frames = sf.info(io.BytesIO(output)).frames

    stitched, rate = decode(stitch(pcm_wav(original), output, 3, expected))

    assert rate == RATE and stitched.shape[1] == 2
    assert len(stitched) == pytest.approx(5 * RATE + (decoded_frames - 3 * 48000) * 2 / 3, abs=2)
    np.testing.assert_array_equal(stitched[: 4 * RATE], original[: 4 * RATE])


def test_stitch_refuses_what_it_cannot_join() -> None:
    four_channels = pcm_wav(sine(0, 2 * RATE, channels=4))
    stereo = pcm_wav(sine(0, 4 * RATE))

    with pytest.raises(AudioError, match="can't join 2-channel audio to 4-channel"):
        stitch(four_channels, stereo, 1, expected_wav(4))
    with pytest.raises(AudioError, match="ends within its 4 s prompt"):
        stitch(stereo, stereo, 4, expected_wav(4))
    with pytest.raises(UnexpectedAudioError, match="wrong channels"):
        stitch(stereo, stereo, 1, expected_wav(4, channels=1))
    with pytest.raises(AudioError, match="not decodable audio"):
        stitch(b"<html></html>" * 50, stereo, 1, expected_wav(4))
