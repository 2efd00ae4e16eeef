"""Tests for bot.music.isolation: untrusted audio handled in a limited child process.

The functions that misbehave on purpose (segfault, hog memory, spin, hang) live here at module
level, so that the child can unpickle them by name; the child imports this module to run them.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import soundfile as sf
from PIL import Image

from bot.music.audio import (
    AudioError,
    AudioInfo,
    ExpectedAudio,
    FittedAudio,
    UnexpectedAudioError,
    probe,
    waveform_png,
)
from bot.music.isolation import (
    AudioWorkerError,
    ChildLimits,
    PreparedTrack,
    continuation_clip,
    fit_again,
    prepare_track,
    probe_untrusted,
    run_isolated,
    stitch_extension,
)
from bot.music.request import AudioFormat, MusicRequest
from bot.music.tags import TrackTags, read_tags
from tests.test_audio import CRASHING_HEADERS, RATE, crafted_wav, decode, encode, silent_flac, sine
from tests.test_audio import signal as music
from tests.test_audio import wav as wav_of

STEREO_8S = ExpectedAudio(channels=2, seconds=8, format=AudioFormat.WAV)
HTML = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>\n" * 20


def wav8() -> bytes:
    return wav_of(8.0)


async def prepare_normal_track() -> None:
    """The call every misbehaving child is followed by: the next call must still work."""
    prepared = await prepare_track(wav8(), STEREO_8S, 10 * 1024 * 1024)
    assert prepared.fitted is not None and not prepared.fitted.transcoded


# --- normal tracks -------------------------------------------------------------------------


async def test_a_normal_track_prepares_and_fits_a_small_limit() -> None:
    data = wav8()  # 1 MB
    expected = ExpectedAudio.for_request(MusicRequest(prompt="lofi", duration=8))
    limit = 150_000

    prepared = await prepare_track(data, expected, limit)

    assert (prepared.info.channels, prepared.info.samplerate, prepared.info.frames) == (
        2,
        32000,
        8 * 32000,
    )
    fitted = prepared.fitted
    assert fitted is not None and fitted.transcoded
    assert len(fitted.data) + len(prepared.waveform) <= limit  # the picture shares the limit
    info = probe(fitted.data)
    assert (info.channels, info.samplerate) == (2, 32000)
    assert info.duration_seconds == pytest.approx(8.0, abs=0.15)
    with Image.open(io.BytesIO(prepared.waveform)) as image:
        assert (image.format, image.size) == ("PNG", (800, 160))


async def test_a_track_that_fits_comes_back_as_the_very_same_bytes() -> None:
    data = wav8()

    prepared = await prepare_track(data, STEREO_8S, 10 * 1024 * 1024)

    assert prepared.fitted is not None
    assert prepared.fitted.data is data and not prepared.fitted.transcoded
    assert prepared.fitted.description == "WAV"


async def test_fit_again_shrinks_under_a_smaller_limit() -> None:
    data = wav8()

    smaller = await fit_again(data, len(data) // 20)
    nothing = await fit_again(data, 100)

    assert smaller is not None and smaller.transcoded and len(smaller.data) <= len(data) // 20
    assert nothing is None


async def test_an_mp3_output_at_44_1_khz_is_accepted() -> None:
    data = encode(music(8.0, 44100, 1), 44100, "MP3", "MPEG_LAYER_III")
    expected = ExpectedAudio.for_request(
        MusicRequest(prompt="lofi", duration=8, model_version="large", output_format="mp3")
    )

    prepared = await prepare_track(data, expected, 10 * 1024 * 1024)

    assert prepared.info.samplerate == 44100
    assert prepared.fitted is not None and prepared.fitted.data is data


# --- tags ----------------------------------------------------------------------------------

TAGS = TrackTags(prompt="lofi", seed=7, model="stereo-large", duration_seconds=8)


async def test_a_track_that_fits_goes_out_as_it_came_with_tags_added() -> None:
    data = wav8()

    prepared = await prepare_track(data, STEREO_8S, 10 * 1024 * 1024, tags=TAGS)

    fitted = prepared.fitted
    assert fitted is not None and not fitted.transcoded and fitted.extension == "wav"
    assert read_tags(fitted.data, "wav")["title"] == "lofi"
    assert decode(fitted.data)[0].tobytes() == decode(data)[0].tobytes()


@pytest.mark.parametrize("limit", [150_000, 1_024_044])
async def test_a_tagged_fit_stays_under_the_limit(limit: int) -> None:
    """1_024_044 is the untagged WAV's own size: the tags can't make it fit any more."""
    data = wav8()
    assert len(data) == 1_024_044

    fitted = await fit_again(data, limit, tags=TAGS)
    prepared = await prepare_track(data, STEREO_8S, limit, tags=TAGS)

    assert fitted is not None and fitted.transcoded and len(fitted.data) <= limit
    assert read_tags(fitted.data, fitted.extension)["seed"] == "7"
    assert prepared.fitted is not None
    assert len(prepared.fitted.data) + len(prepared.waveform) <= limit
    assert read_tags(prepared.fitted.data, prepared.fitted.extension)["model"] == "stereo-large"


# --- continuation ----------------------------------------------------------------------------


def pcm_wav(samples: object) -> bytes:
    return encode(samples, RATE, "WAV", "PCM_16")


@pytest.mark.parametrize(("seconds", "clip_seconds"), [(10, 4), (3, 3)])
async def test_continuation_clip_is_the_tracks_last_seconds(
    seconds: int, clip_seconds: int
) -> None:
    track = sine(0, seconds * RATE)

    clip = await continuation_clip(pcm_wav(track), 4)

    assert (clip.clip_seconds, clip.total_seconds) == (clip_seconds, seconds)
    assert (clip.samplerate, clip.channels) == (RATE, 2)
    samples, _ = decode(clip.wav)
    assert samples.tobytes() == track[-clip_seconds * RATE :].tobytes()


async def test_continuation_clip_refuses_what_is_not_audio() -> None:
    with pytest.raises(AudioError, match="not decodable audio"):
        await continuation_clip(HTML, 4)
    with pytest.raises(UnexpectedAudioError, match="256 channels"):
        await continuation_clip(crafted_wav(*CRASHING_HEADERS["256-channels"]), 4)
    with pytest.raises(ValueError):
        await continuation_clip(wav8(), 0)


async def test_stitch_extension_continues_the_original_seamlessly() -> None:
    original = sine(0, 8 * RATE)
    output = sine(4 * RATE, 12 * RATE)
    expected = ExpectedAudio(channels=2, seconds=12, format=AudioFormat.WAV)

    stitched = await stitch_extension(pcm_wav(original), pcm_wav(output), 4, expected)

    samples, rate = decode(stitched)
    assert rate == RATE and samples.shape == (16 * RATE, 2)
    assert abs(samples.astype(int) - sine(0, 16 * RATE)).max() <= 1
    assert samples[: 7 * RATE].tobytes() == original[: 7 * RATE].tobytes()


async def test_stitch_extension_refuses_an_output_unlike_the_request() -> None:
    original = pcm_wav(sine(0, 8 * RATE))
    mono = pcm_wav(sine(4 * RATE, 12 * RATE, channels=1))
    expected = ExpectedAudio(channels=2, seconds=12, format=AudioFormat.WAV)

    with pytest.raises(UnexpectedAudioError, match="wrong channels"):
        await stitch_extension(original, mono, 4, expected)
    with pytest.raises(UnexpectedAudioError, match="wrong format, channels"):
        await stitch_extension(original, silent_flac(), 4, expected)
    with pytest.raises(AudioError, match="not decodable audio"):
        await stitch_extension(HTML, pcm_wav(sine(0, 12 * RATE)), 4, expected)
    with pytest.raises(ValueError):
        await stitch_extension(original, mono, -1, expected)


# --- hostile outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("header", sorted(CRASHING_HEADERS))
async def test_crafted_headers_are_refused_before_encoding(header: str) -> None:
    data = crafted_wav(*CRASHING_HEADERS[header])

    with pytest.raises(UnexpectedAudioError, match="expected WAV, 2 channel"):
        await prepare_track(data, STEREO_8S, len(data) // 3)
    # Even without expectations (the shrink path), the encoders never see such a header:
    # a crash would be an AudioWorkerError, not a refusal.
    with pytest.raises(UnexpectedAudioError, match="implausible audio"):
        await fit_again(data, len(data) // 3)
    await prepare_normal_track()


@pytest.mark.parametrize("header", sorted(CRASHING_HEADERS))
def test_encoding_crafted_headers_in_process_would_crash(header: str, tmp_path: Path) -> None:
    """Why the refusal and the child exist: libsndfile's Vorbis encoder segfaults on these."""
    path = tmp_path / "crafted.wav"
    path.write_bytes(crafted_wav(*CRASHING_HEADERS[header]))
    script = textwrap.dedent(
        """
        import io, sys
        import soundfile as sf
        samples, rate = sf.read(sys.argv[1], dtype="int16", always_2d=True)
        sf.write(io.BytesIO(), samples[:1000], rate, format="OGG", subtype="VORBIS")
        """
    )

    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, timeout=60
    )

    if done.returncode == 0:
        pytest.skip("this libsndfile encodes the header without crashing")
    assert done.returncode == -signal.SIGSEGV, done.stderr[-2000:]


async def test_an_html_page_is_an_audio_error() -> None:
    with pytest.raises(AudioError, match="not decodable audio") as caught:
        await prepare_track(HTML, STEREO_8S, 10 * 1024 * 1024)

    assert type(caught.value) is AudioError


async def test_ten_minutes_of_8_channel_flac_is_refused_by_the_check() -> None:
    with pytest.raises(UnexpectedAudioError, match="wrong format, channels, duration") as caught:
        await prepare_track(silent_flac(), STEREO_8S, 10 * 1024 * 1024)

    assert caught.value.info.channels == 8
    assert caught.value.info.duration_seconds == 600


async def test_the_flac_bomb_draws_under_a_budget_that_a_whole_decode_blows() -> None:
    tight = ChildLimits(memory_bytes=256 * 1024 * 1024)

    png = await run_isolated(waveform_png, silent_flac(), limits=tight)

    assert png.startswith(b"\x89PNG")
    with pytest.raises(AudioWorkerError, match="ran out of memory"):
        await run_isolated(decode_all, silent_flac(), limits=tight)


# --- input clips ---------------------------------------------------------------------------


async def test_probe_untrusted_reports_what_a_clip_holds() -> None:
    info = await probe_untrusted(encode(music(3.0, 44100, 1), 44100, "FLAC"))

    assert (info.format, info.channels, info.samplerate) == ("flac", 1, 44100)
    assert info.duration_seconds == 3.0


@pytest.mark.parametrize(
    "data",
    [b"definitely a song, honest\n" * 100, HTML, b""],
    ids=["text-named-wav", "html", "empty"],
)
async def test_probe_untrusted_refuses_what_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioError):
        await probe_untrusted(data)


async def test_probe_untrusted_refuses_implausible_clips() -> None:
    with pytest.raises(UnexpectedAudioError, match="256 channels"):
        await probe_untrusted(crafted_wav(*CRASHING_HEADERS["256-channels"]))


# --- children that misbehave ---------------------------------------------------------------


def segfault(data: bytes) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hog_memory(data: bytes) -> int:
    return len(bytearray(4 * 1024**3))


def decode_all(data: bytes) -> int:
    samples, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return int(samples.nbytes)


def spin(data: bytes) -> None:
    while True:
        pass


def hang(data: bytes, pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)


def broken(data: bytes) -> None:
    raise ZeroDivisionError("a bug, not the audio")


async def pid_of_child(pid_file: Path) -> int:
    """The pid `hang` writes once it runs (the child has started within a few seconds)."""
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            return int(pid_file.read_text())
        await asyncio.sleep(0.02)
    raise AssertionError("the child never started")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_segfaulting_child_is_an_audio_error_and_the_next_call_works() -> None:
    with pytest.raises(AudioWorkerError, match="died of SIGSEGV"):
        await run_isolated(segfault, wav8())

    await prepare_normal_track()


async def test_a_child_past_its_memory_limit_is_an_audio_error() -> None:
    with pytest.raises(AudioWorkerError, match=r"ran out of memory \(over 128 MB\)"):
        await run_isolated(hog_memory, b"", limits=ChildLimits(memory_bytes=128 * 1024 * 1024))

    await prepare_normal_track()


async def test_a_child_past_its_cpu_limit_is_stopped() -> None:
    with pytest.raises(AudioWorkerError, match="more than 1 s of CPU"):
        await run_isolated(spin, b"", limits=ChildLimits(cpu_seconds=1, wall_seconds=30))


async def test_a_stuck_child_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()

    with pytest.raises(AudioWorkerError, match="took longer than 1 s and was killed"):
        await run_isolated(
            partial(hang, pid_file=pid_file), b"", limits=ChildLimits(wall_seconds=1)
        )

    assert time.monotonic() - started < 10
    assert gone(int(pid_file.read_text()))
    await prepare_normal_track()


async def test_cancelling_the_call_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    call = asyncio.create_task(run_isolated(partial(hang, pid_file=pid_file), b""))
    pid = await pid_of_child(pid_file)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    for _ in range(250):
        if gone(pid):
            break
        await asyncio.sleep(0.02)
    assert gone(pid)


async def test_concurrent_calls_each_get_their_own_answer() -> None:
    data = wav8()
    calls = [
        prepare_track(data, STEREO_8S, 10 * 1024 * 1024),
        run_isolated(segfault, b""),
        prepare_track(HTML, STEREO_8S, 10 * 1024 * 1024),
        fit_again(data, len(data) // 20),
        probe_untrusted(data),
        run_isolated(segfault, b""),
    ]

    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[0], PreparedTrack) and results[0].fitted is not None
    assert results[0].fitted.data is data
    for crashed in (results[1], results[5]):
        assert isinstance(crashed, AudioWorkerError) and "SIGSEGV" in crashed.reason
    assert type(results[2]) is AudioError
    assert isinstance(results[3], FittedAudio) and results[3].transcoded
    assert isinstance(results[4], AudioInfo) and results[4].channels == 2


async def test_a_bug_in_the_child_is_an_audio_error_with_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(AudioWorkerError, match="ZeroDivisionError: a bug, not the audio"):
        await run_isolated(broken, b"")

    assert "Traceback" in caplog.text and "raise ZeroDivisionError" in caplog.text
