"""Audio bytes in, audio bytes out: probing, checking, fitting under an upload limit, waveforms.

Everything here is synchronous and CPU-bound (libsndfile via soundfile, numpy, Pillow). The bytes
come from outside (a model's output, a user's clip), and libsndfile's codecs are C code that a
crafted header can crash, so the bot calls these functions through `bot.music.isolation`, which
runs them in a child process with limits. The checks here (`ExpectedAudio`, `check_plausible`)
read headers only and run before any decoding. Nothing here knows about Discord: the upload limit
is just a number of bytes.

`fit_to_limit` walks a ladder from best to worst quality and returns the first rung that fits:

    original bytes (if they fit)
    FLAC (lossless)
    Ogg Vorbis at falling quality (Ogg Opus instead when the sample rate is one Opus accepts)
    MP3 CBR at falling bitrates

Encoding a five-minute track takes seconds per rung (MP3 most of all), so rungs are sized before
they are encoded: constant-bitrate MP3 exactly from bitrate and duration, variable-rate codecs by
encoding a few short excerpts spread over the track and scaling up. A rung whose estimate is
clearly over the limit is skipped without ever encoding the whole track.

Continuing a track takes two more steps: `tail_clip` cuts its last whole seconds as the prompt
MusicGen continues from, and `stitch` joins the model's output to the track, dropping the output's
own rendition of that prompt and crossfading at the join.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from numpy.typing import NDArray
from PIL import Image

from bot.music.request import AudioFormat, MusicRequest

log = logging.getLogger(__name__)

__all__ = [
    "AudioError",
    "AudioInfo",
    "Clip",
    "ExpectedAudio",
    "FittedAudio",
    "UnexpectedAudioError",
    "check_plausible",
    "fit_to_limit",
    "probe",
    "probe_clip",
    "stitch",
    "tail_clip",
    "waveform_png",
]


class AudioError(Exception):
    """The bytes aren't usable audio. The message says why, for logs."""


class UnexpectedAudioError(AudioError):
    """The bytes decode, but hold something other than what was asked for (or than any sane
    file holds). `info` is what the header claims."""

    def __init__(self, message: str, info: AudioInfo) -> None:
        super().__init__(message)
        self.info = info

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses a process boundary by pickle; the default would call __init__ with one argument.
        return type(self), (str(self), self.info)


@dataclass(frozen=True)
class AudioInfo:
    """What `probe` found in a blob of audio."""

    format: str  # lower-case file extension: wav | mp3 | flac | ogg (others as libsndfile names)
    samplerate: int
    channels: int
    frames: int

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.samplerate

    def describe(self) -> str:
        return (
            f"{self.format.upper()}, {self.channels} channel(s), {self.samplerate} Hz, "
            f"{self.duration_seconds:.1f} s"
        )


@dataclass(frozen=True)
class FittedAudio:
    """Audio ready to upload: the original bytes, or a smaller encoding of them."""

    data: bytes = field(repr=False)
    extension: str  # wav | flac | ogg | mp3 (or the original's extension when untouched)
    description: str  # for people: "WAV", "FLAC", "Ogg Vorbis ~128 kbit/s", "MP3 96 kbit/s"
    transcoded: bool  # False when `data` is the original encoding (perhaps with tags added)


# libsndfile's major format -> the file extension it is usually saved under.
_EXTENSIONS = {
    "WAV": "wav",
    "WAVEX": "wav",
    "RF64": "wav",
    "MP3": "mp3",
    "FLAC": "flac",
    "OGG": "ogg",
}

# How to decode a source losslessly, by its libsndfile subtype: 16-bit (and smaller) PCM is read
# as int16 and 24/32-bit PCM as int32, which libsndfile round-trips exactly; float and lossy
# sources are read as float32 (clipped before encoding, since libsndfile doesn't clip on write).
_WIDE_PCM = frozenset({"PCM_24", "PCM_32"})
_FLOATING = frozenset({"FLOAT", "DOUBLE"})
_LOSSY = frozenset({"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III", "VORBIS", "OPUS"})

# Frames handed to libsndfile per write. libvorbis allocates its analysis buffer on the stack in
# proportion to one write, which overflows (and crashes the process) for long single writes,
# worker threads' smaller stacks above all; small writes cost nothing measurable.
_BLOCK_FRAMES = 8192

# Ladders, best quality first. Vorbis: libsndfile's compression level 0..1 maps to Vorbis quality
# 10..0 (about 390..60 kbit/s for 32 kHz stereo music). Opus and MP3: target bitrates in kbit/s.
_VORBIS_LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
_OPUS_KBPS = (192, 160, 128, 96, 80, 64, 48, 32, 24)
_OPUS_SAMPLERATES = frozenset({8000, 12000, 16000, 24000, 48000})
_MP3_KBPS = (192, 160, 128, 96, 64, 48, 32, 24, 16, 8)

# Size estimates for variable-rate codecs come from this much audio (at most), cut into this many
# pieces spread evenly over the track; tracks too short for a useful excerpt are just encoded.
_EXCERPT_SECONDS = 12.0
_EXCERPT_PIECES = 8
_MIN_EXCERPT_SECONDS = 1.0
# A rung is skipped only when its estimate is over the limit by more than this factor: estimates
# from excerpts land within about 5% of the real size, and skipping a rung that would have fit
# costs quality, while encoding one that doesn't costs seconds.
_ESTIMATE_SLACK = 1.05

# What libsndfile (through soundfile) raises for data or settings it can't handle.
_SOUNDFILE_ERRORS: tuple[type[Exception], ...] = (sf.SoundFileError, RuntimeError, ValueError)


def probe(data: bytes) -> AudioInfo:
    """Read the format, sample rate, channel count and length of `data` (headers only, cheap).

    Raises AudioError when the bytes are empty, not audio, or audio with no frames.
    """
    return _probe(data)[0]


# What any file this bot handles may hold. libvorbis segfaults on 256 channels and on rates far
# above 192 kHz, and FLAC stops at 8 channels, so audio outside these bounds is refused before
# anything encodes it. An hour bounds what a header may claim (MusicGen makes at most minutes).
MAX_CHANNELS = 8
MIN_SAMPLERATE = 8000
MAX_SAMPLERATE = 192_000
MAX_SECONDS = 3600

# MusicGen writes 32 kHz; see ExpectedAudio for the MP3 exception.
MUSICGEN_SAMPLERATE = 32000
_MP3_SAMPLERATES = frozenset({32000, 44100, 48000})


@dataclass(frozen=True)
class ExpectedAudio:
    """What a finished generation must hold, judged from its header before any heavy work.

    Channels follow the model (stereo models give 2, the others 1); the length is the requested
    duration (for continuation too, where it is the total), within `tolerance_seconds`. The rate
    is MusicGen's 32 kHz, except that an MP3 may also come at 44.1 or 48 kHz: the MP3 encoder
    behind the model may resample to the rates MPEG-1 players expect, and those are harmless.
    """

    channels: int
    seconds: float
    format: AudioFormat

    @classmethod
    def for_request(cls, request: MusicRequest) -> ExpectedAudio:
        return cls(
            channels=2 if request.model_version.is_stereo else 1,
            seconds=float(request.duration),
            format=request.output_format,
        )

    @property
    def samplerates(self) -> frozenset[int]:
        if self.format is AudioFormat.MP3:
            return _MP3_SAMPLERATES
        return frozenset({MUSICGEN_SAMPLERATE})

    @property
    def tolerance_seconds(self) -> float:
        return max(1.0, 0.1 * self.seconds)

    def check(self, info: AudioInfo) -> None:
        """Raise UnexpectedAudioError naming every way `info` differs from what was asked."""
        wrong = [
            name
            for name, ok in (
                ("format", info.format == self.format.value),
                ("channels", info.channels == self.channels),
                ("sample rate", info.samplerate in self.samplerates),
                ("duration", abs(info.duration_seconds - self.seconds) <= self.tolerance_seconds),
            )
            if not ok
        ]
        if wrong:
            raise UnexpectedAudioError(
                f"wrong {', '.join(wrong)}: expected {self.describe()}; got {info.describe()}",
                info,
            )

    def describe(self) -> str:
        rates = " or ".join(str(rate) for rate in sorted(self.samplerates))
        return (
            f"{self.format.value.upper()}, {self.channels} channel(s), {rates} Hz, "
            f"{self.seconds:g} s ± {self.tolerance_seconds:g} s"
        )


def check_plausible(info: AudioInfo) -> None:
    """Raise UnexpectedAudioError when `info` is outside what any file here may hold (the
    bounds above): such headers are crafted or broken, and encoders crash on some of them."""
    problems = []
    if info.channels > MAX_CHANNELS:
        problems.append(f"{info.channels} channels (at most {MAX_CHANNELS})")
    if not MIN_SAMPLERATE <= info.samplerate <= MAX_SAMPLERATE:
        problems.append(f"{info.samplerate} Hz ({MIN_SAMPLERATE}..{MAX_SAMPLERATE})")
    if info.duration_seconds > MAX_SECONDS:
        problems.append(f"{info.duration_seconds:.0f} s (at most {MAX_SECONDS})")
    if problems:
        raise UnexpectedAudioError(f"implausible audio: {'; '.join(problems)}", info)


def probe_clip(data: bytes) -> AudioInfo:
    """`probe` for a clip a user hands in: also refuses implausible headers and checks that the
    first samples really decode, so that a broken file isn't sent to the model (and paid for).

    Raises AudioError (UnexpectedAudioError for implausible audio).
    """
    info = probe(data)
    check_plausible(info)
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            first = source.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as exc:
        raise AudioError(f"audio doesn't decode ({len(data)} bytes): {_reason(exc)}") from exc
    if len(first) == 0:
        raise AudioError(f"audio decodes to no frames ({len(data)} bytes)")
    return info


def fit_to_limit(data: bytes, limit_bytes: int) -> FittedAudio | None:
    """The best-quality version of `data` that is at most `limit_bytes` long, or None.

    The original bytes come back untouched when they fit; otherwise the audio is re-encoded
    (same channels and sample rate) down the ladder in the module docstring. None means even the
    lowest rung is too big. Raises AudioError when `data` isn't decodable audio, and
    UnexpectedAudioError, before encoding anything, when it is implausible (`check_plausible`).
    """
    info, subtype = _probe(data)
    check_plausible(info)
    if len(data) <= limit_bytes:
        return FittedAudio(
            data=data,
            extension=info.format,
            description=_original_description(info.format, subtype),
            transcoded=False,
        )
    if limit_bytes <= 0:
        return None

    started = time.perf_counter()
    pcm, flac_subtype = _decode(data, subtype)
    samplerate = info.samplerate
    frames = len(pcm)
    excerpt = _excerpt(pcm, samplerate)
    # Per codec: the actual/estimated size ratio seen so far, to sharpen later estimates.
    corrections: dict[str, float] = {}
    broken: set[str] = set()  # codecs libsndfile refused for this audio (e.g. sample rate)

    for rung in _ladder(samplerate, pcm.shape[1], flac_subtype):
        if rung.codec in broken:
            continue
        try:
            estimate = _estimate(rung, pcm, samplerate, excerpt)
        except _SOUNDFILE_ERRORS as exc:
            log.debug("%s: can't encode this audio (%s); skipping the codec", rung.name, exc)
            broken.add(rung.codec)
            continue
        if estimate is not None:
            estimate *= corrections.get(rung.codec, 1.0)
            slack = 1.0 if rung.kbps_exact else _ESTIMATE_SLACK
            if estimate > limit_bytes * slack:
                log.debug("%s: skipped, about %d bytes > %d", rung.name, estimate, limit_bytes)
                continue
        try:
            encoded = _encode(pcm, samplerate, rung)
        except _SOUNDFILE_ERRORS as exc:
            log.debug("%s: can't encode this audio (%s); skipping the codec", rung.name, exc)
            broken.add(rung.codec)
            continue
        if estimate is not None and estimate > 0:
            corrections[rung.codec] = corrections.get(rung.codec, 1.0) * len(encoded) / estimate
        if len(encoded) > limit_bytes:
            log.debug(
                "%s: %d bytes > %d (estimated %s)", rung.name, len(encoded), limit_bytes, estimate
            )
            continue
        try:
            _probe(encoded)
        except AudioError as exc:  # pragma: no cover - would be a libsndfile bug
            log.warning("%s: encoder output doesn't decode (%s); skipping", rung.name, exc)
            continue
        fitted = FittedAudio(
            data=encoded,
            extension=rung.extension,
            description=rung.describe(len(encoded), frames / samplerate),
            transcoded=True,
        )
        log.info(
            "fitted %d bytes of %s (%.1f s) into %d as %s in %.2f s",
            len(data),
            info.format,
            frames / samplerate,
            len(encoded),
            fitted.description,
            time.perf_counter() - started,
        )
        return fitted

    log.info(
        "nothing fits %d bytes of %s (%.1f s) into %d (%.2f s spent)",
        len(data),
        info.format,
        frames / samplerate,
        limit_bytes,
        time.perf_counter() - started,
    )
    return None


# Drawn on a transparent background, so it sits on both light and dark themes.
WAVEFORM_COLOUR = (88, 101, 242)  # a blurple accent
# Quiet tracks are scaled up so their loudest peak reaches the edges, but by at most this much
# (20 dB), so near-silence stays a near-flat line instead of magnified noise.
_WAVEFORM_MAX_GAIN = 10.0
# Frames decoded at a time for the waveform: 2 MB of float32 at 8 channels.
_WAVEFORM_BLOCK_FRAMES = 65536


def waveform_png(data: bytes, width: int = 800, height: int = 160) -> bytes:
    """A PNG picture of the audio: per pixel column, the min..max of the mono mix.

    The audio is read a block at a time, so memory stays flat however long the file claims to
    be (ten minutes of 8-channel FLAC is a few kilobytes, and 600 MB as float32). Silence draws
    as a one-pixel centre line. Raises AudioError when `data` isn't decodable audio (and
    UnexpectedAudioError when it is implausible), ValueError for a non-positive size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"waveform size must be positive, got {width}x{height}")
    info = probe(data)
    check_plausible(info)
    low, high = _column_extremes(data, info, width)
    peak = float(max(-low.min(), high.max(), 0.0))
    gain = min(1.0 / peak, _WAVEFORM_MAX_GAIN) if peak > 0 else 1.0
    middle = (height - 1) / 2
    top = np.rint(middle - np.clip(high * gain, -1.0, 1.0) * middle).astype(np.int64)
    bottom = np.rint(middle - np.clip(low * gain, -1.0, 1.0) * middle).astype(np.int64)
    rows = np.arange(height, dtype=np.int64)[:, np.newaxis]
    mask = (rows >= top[np.newaxis, :]) & (rows <= bottom[np.newaxis, :])
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[mask] = (*WAVEFORM_COLOUR, 255)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# --- continuation --------------------------------------------------------------------------

# The join between a track and its continuation is crossfaded over this long: enough to hide
# the switch from the original to the model's rendition of it, too short to smear a beat.
CROSSFADE_SECONDS = 0.1
# Frames decoded at a time while looking for a track's end.
_TAIL_BLOCK_FRAMES = 65536


@dataclass(frozen=True)
class Clip:
    """The end of a track, cut for MusicGen's `input_audio` when continuing it."""

    wav: bytes = field(repr=False)  # 16-bit PCM WAV, which MusicGen reads
    clip_seconds: float
    total_seconds: float  # the whole track, as decoded (not as its header claims)
    samplerate: int
    channels: int


def tail_clip(data: bytes, max_seconds: float) -> Clip:
    """The last whole seconds of `data`, at most `max_seconds` of them, as 16-bit PCM WAV.

    MusicGen counts its prompt in seconds, so the cut lies a whole number of seconds before
    the end (the whole track when that is under a second). Decoding goes a block at a time,
    keeping only the tail, so a header that overstates the length costs time, not memory.
    Raises ValueError when `max_seconds` < 1, AudioError when `data` isn't decodable audio
    (UnexpectedAudioError when it is implausible).
    """
    if max_seconds < 1:
        raise ValueError(f"a continuation prompt needs at least a second, not {max_seconds}")
    info, subtype = _probe(data)
    check_plausible(info)
    rate = info.samplerate
    tail, total = _decoded_tail(data, subtype, int(max_seconds) * rate)
    if total >= rate:  # whole seconds: trims only a track shorter than the clip
        tail = tail[len(tail) % rate :]
    return Clip(
        wav=_wav16(tail, rate),
        clip_seconds=len(tail) / rate,
        total_seconds=total / rate,
        samplerate=rate,
        channels=tail.shape[1],
    )


def stitch(
    original: bytes, output: bytes, context_seconds: float, expected: ExpectedAudio
) -> bytes:
    """`original` in full, then `output` past its first `context_seconds`, as 16-bit PCM WAV.

    A continuation's output opens with the model's own rendition of its prompt (the end of
    `original`), so that part is dropped; the last `CROSSFADE_SECONDS` of the original fade into
    the rendition's so the join doesn't click. The result keeps the original's rate and
    channels: an output that differs is converted (`_conformed`). `output` is checked against
    `expected` before anything is decoded. Raises UnexpectedAudioError for an output that isn't
    what was asked (or an implausible original), AudioError when either isn't decodable audio,
    when the output holds nothing past the context, or when its channels can't be converted.
    """
    output_info, output_subtype = _probe(output)
    expected.check(output_info)
    info, subtype = _probe(original)
    check_plausible(info)
    rate = info.samplerate
    head = _pcm16(original, subtype)
    tail = _conformed(_pcm16(output, output_subtype), output_info.samplerate, rate, info.channels)
    cut = round(context_seconds * rate)
    if cut >= len(tail):
        raise AudioError(f"the continuation ends within its {context_seconds:g} s prompt")
    fade = min(round(CROSSFADE_SECONDS * rate), len(head), cut)
    joint = _crossfade(head[len(head) - fade :], tail[cut - fade : cut])
    return _wav16(np.concatenate([head[: len(head) - fade], joint, tail[cut:]]), rate)


def _decoded_tail(data: bytes, subtype: str, frames: int) -> tuple[NDArray[np.int16], int]:
    """The last `frames` frames of `data` as 16-bit samples, and how many frames it holds."""
    kept: deque[NDArray[np.int16]] = deque()
    held = total = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            while len(block := source.read(_TAIL_BLOCK_FRAMES, _dtype(subtype), always_2d=True)):
                kept.append(_to_int16(block))
                held, total = held + len(block), total + len(block)
                while held - len(kept[0]) >= frames:
                    held -= len(kept.popleft())
    except _SOUNDFILE_ERRORS as exc:
        raise AudioError(f"audio doesn't decode ({len(data)} bytes): {_reason(exc)}") from exc
    if total == 0:
        raise AudioError(f"audio decodes to no frames ({len(data)} bytes)")
    tail = np.concatenate(kept)
    return tail[max(0, len(tail) - frames) :], total


def _pcm16(data: bytes, subtype: str) -> NDArray[np.int16]:
    """All of `data` as 16-bit samples (frames x channels): 16-bit PCM exactly as stored."""
    return _to_int16(_read(data, _dtype(subtype)))


def _dtype(subtype: str) -> str:
    """What to read a source as on the way to 16 bits: libsndfile rounds floats to integers
    without clipping, so float and lossy sources are read as float and clipped here."""
    return "float32" if subtype in _FLOATING or subtype in _LOSSY else "int16"


def _to_int16(samples: NDArray[Any]) -> NDArray[np.int16]:
    if samples.dtype == np.int16:
        result: NDArray[np.int16] = samples
        return result
    # libsndfile's own scale for float to 16-bit PCM, so a float source writes as it would.
    return _rounded(np.clip(samples, -1.0, 1.0) * 32767)


def _rounded(values: NDArray[Any]) -> NDArray[np.int16]:
    """Samples in 16-bit units, as floats, rounded and clipped to 16 bits."""
    result: NDArray[np.int16] = np.rint(np.clip(values, -32768, 32767)).astype(np.int16)
    return result


def _conformed(
    samples: NDArray[np.int16], rate: int, to_rate: int, channels: int
) -> NDArray[np.int16]:
    """`samples` at `to_rate` with `channels` channels: mono is copied to every channel, many
    are averaged to mono, and the rate is changed by linear interpolation, which is enough
    here: MusicGen renders at 32 kHz, so nothing above 16 kHz is there to alias. Raises
    AudioError for other channel changes (stereo to 4.0, say), which have no single meaning."""
    have = samples.shape[1]
    if have != channels and 1 not in (have, channels):
        raise AudioError(f"can't join {have}-channel audio to {channels}-channel audio")
    if have == 1 and channels > 1:
        samples = np.repeat(samples, channels, axis=1)
    elif channels == 1 and have > 1:
        samples = _rounded(samples.mean(axis=1, keepdims=True))
    if rate == to_rate:
        return samples
    times = np.arange(round(len(samples) * to_rate / rate)) * (rate / to_rate)
    frames = np.arange(len(samples))
    columns = [np.interp(times, frames, samples[:, c]) for c in range(samples.shape[1])]
    return _rounded(np.stack(columns, axis=1))


def _crossfade(leaving: NDArray[np.int16], arriving: NDArray[np.int16]) -> NDArray[np.int16]:
    """An equal-power crossfade from `leaving` to `arriving`, corrected for how alike they are.

    Equal power (cos/sin gains) keeps the loudness of unrelated signals steady, but swells
    identical ones by 3 dB midway, and the model's rendition of its prompt is close to the
    original. So the gains are divided by sqrt(1 + 2 r cos sin), with r the two sides'
    correlation (0..1): plain equal power when they are unrelated, equal gain when alike.
    """
    a, b = leaving.astype(np.float64), arriving.astype(np.float64)
    angle = (np.arange(len(a)) + 0.5) / max(len(a), 1) * (np.pi / 2)
    fade_out, fade_in = np.cos(angle), np.sin(angle)
    energy = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    rho = min(max(float(np.sum(a * b)) / energy, 0.0), 1.0) if energy > 0 else 0.0
    norm = 1 / np.sqrt(1 + 2 * rho * fade_out * fade_in)
    mixed = a * (fade_out * norm)[:, np.newaxis] + b * (fade_in * norm)[:, np.newaxis]
    return _rounded(mixed)


def _wav16(samples: NDArray[np.int16], samplerate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, samplerate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# --- internals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rung:
    """One encoding to try: a libsndfile format/subtype with its quality settings."""

    codec: str  # "flac" | "vorbis" | "opus" | "mp3": rungs of one codec share corrections
    format: str
    subtype: str
    extension: str
    compression_level: float | None = None
    bitrate_mode: str | None = None
    kbps: int | None = None  # target bitrate, for the label (and the estimate when exact)
    kbps_exact: bool = False  # constant bitrate: size follows from bitrate and duration

    @property
    def name(self) -> str:
        if self.codec == "vorbis":
            return f"vorbis level {self.compression_level}"
        return f"{self.codec} {self.kbps} kbit/s" if self.kbps else self.codec

    def describe(self, size: int, seconds: float) -> str:
        if self.codec == "flac":
            return "FLAC"
        if self.codec == "mp3":
            return f"MP3 {self.kbps} kbit/s"
        average = round(size * 8 / seconds / 1000) if seconds > 0 else 0
        return f"Ogg {self.codec.capitalize()} ~{average} kbit/s"


def _ladder(samplerate: int, channels: int, flac_subtype: str) -> list[_Rung]:
    rungs = [_Rung("flac", "FLAC", flac_subtype, "flac")]
    if samplerate in _OPUS_SAMPLERATES:
        for kbps in _OPUS_KBPS:
            # libsndfile: bitrate per channel = (1 - level) * 250 kbit/s + 6 kbit/s.
            level = 1.0 - (kbps * 1000 / channels - 6000) / 250_000
            if 0.0 <= level <= 1.0:
                rungs.append(_Rung("opus", "OGG", "OPUS", "ogg", level, kbps=kbps))
    else:
        rungs += [_Rung("vorbis", "OGG", "VORBIS", "ogg", level) for level in _VORBIS_LEVELS]
    # libsndfile picks the MP3 CBR bitrate as int(high - level * (high - low)), where the range
    # depends on the MPEG version LAME uses for the sample rate (1, 2 or 2.5).
    if samplerate >= 32000:
        low, high = 32, 320
    elif samplerate >= 16000:
        low, high = 8, 160
    else:
        low, high = 8, 32
    for kbps in _MP3_KBPS:
        if low <= kbps <= high:
            # Aim half a kbit/s above so the truncation lands on `kbps`, not one below it.
            level = min(max((high - kbps - 0.5) / (high - low), 0.0), 1.0)
            rungs.append(
                _Rung(
                    "mp3",
                    "MP3",
                    "MPEG_LAYER_III",
                    "mp3",
                    level,
                    "CONSTANT",
                    kbps=kbps,
                    kbps_exact=True,
                )
            )
    return rungs


def _estimate(
    rung: _Rung, pcm: NDArray[Any], samplerate: int, excerpt: NDArray[Any] | None
) -> float | None:
    """Rough size in bytes of `pcm` encoded as `rung`, or None when only encoding will tell."""
    if rung.kbps_exact and rung.kbps is not None:
        # Encoder delay and padding plus the LAME info frame: about four frames of 1152 samples.
        return rung.kbps * 125 * (len(pcm) + 4 * 1152) / samplerate
    if excerpt is None:
        return None
    header = len(_encode(excerpt[:0], samplerate, rung))
    body = len(_encode(excerpt, samplerate, rung)) - header
    return header + body * len(pcm) / len(excerpt)


def _excerpt(pcm: NDArray[Any], samplerate: int) -> NDArray[Any] | None:
    """A few evenly spread pieces of `pcm`, joined: at most a quarter of it, None if too short."""
    length = min(int(_EXCERPT_SECONDS * samplerate), len(pcm) // 4)
    if length < _MIN_EXCERPT_SECONDS * samplerate:
        return None
    piece = length // _EXCERPT_PIECES
    starts = np.linspace(0, len(pcm) - piece, _EXCERPT_PIECES).astype(np.int64)
    return np.concatenate([pcm[start : start + piece] for start in starts])


def _encode(pcm: NDArray[Any], samplerate: int, rung: _Rung) -> bytes:
    out = io.BytesIO()
    with sf.SoundFile(
        out,
        "w",
        samplerate=samplerate,
        channels=pcm.shape[1],
        format=rung.format,
        subtype=rung.subtype,
        compression_level=rung.compression_level,
        bitrate_mode=rung.bitrate_mode,
    ) as sink:
        for start in range(0, len(pcm), _BLOCK_FRAMES):
            sink.write(pcm[start : start + _BLOCK_FRAMES])
    # Not out.tell(): some formats seek back to finish their header on close.
    return out.getvalue()


def _probe(data: bytes) -> tuple[AudioInfo, str]:
    """AudioInfo plus libsndfile's subtype name (PCM_16, VORBIS, ...)."""
    if not data:
        raise AudioError("no audio: the data is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except _SOUNDFILE_ERRORS as exc:
        raise AudioError(f"not decodable audio ({len(data)} bytes): {_reason(exc)}") from exc
    major = str(info.format)
    samplerate, channels, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if samplerate <= 0 or channels <= 0:
        raise AudioError(f"{major} audio with {samplerate} Hz and {channels} channels")
    if frames <= 0 or frames >= 2**62:  # libsndfile reports 2**63 - 1 when it can't tell
        raise AudioError(f"{major} audio with no frames ({frames})")
    audio = AudioInfo(
        format=_EXTENSIONS.get(major, major.lower()),
        samplerate=samplerate,
        channels=channels,
        frames=frames,
    )
    return audio, str(info.subtype)


def _decode(data: bytes, subtype: str) -> tuple[NDArray[Any], str]:
    """All samples of `data` (frames x channels) and the FLAC subtype that keeps them whole."""
    if subtype in _WIDE_PCM:
        return _read(data, "int32"), "PCM_24"
    if subtype in _FLOATING or subtype in _LOSSY:
        samples = _read(data, "float32")
        np.clip(samples, -1.0, 1.0, out=samples)
        return samples, "PCM_24" if subtype in _FLOATING else "PCM_16"
    return _read(data, "int16"), "PCM_16"


def _read(data: bytes, dtype: str) -> NDArray[Any]:
    try:
        samples, _ = sf.read(io.BytesIO(data), dtype=dtype, always_2d=True)
    except _SOUNDFILE_ERRORS as exc:
        raise AudioError(f"audio doesn't decode ({len(data)} bytes): {_reason(exc)}") from exc
    if len(samples) == 0:
        raise AudioError(f"audio decodes to no frames ({len(data)} bytes)")
    result: NDArray[Any] = samples
    return result


def _column_extremes(
    data: bytes, info: AudioInfo, width: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per pixel column, the min and max of the mono mix, a block at a time.

    Column c covers frames [edges[c], edges[c + 1]) with edges[c] = c * frames // width; a
    column with no frame of its own (fewer frames than columns) shows the frame at its edge,
    as `np.minimum.reduceat` has it. Frames past the header's count extend the last column;
    columns past the last frame that decodes (a header that overstates) stay at zero.
    """
    edges = np.arange(width, dtype=np.int64) * info.frames // width
    low = np.full(width, np.inf, dtype=np.float32)
    high = np.full(width, -np.inf, dtype=np.float32)
    start = 0
    for mono in _mono_blocks(data, info.channels):
        end = start + len(mono)
        first = int(np.searchsorted(edges, start))
        if first == width or edges[first] > start:
            first -= 1  # the column before began in an earlier block and runs into this one
        columns = np.arange(first, int(np.searchsorted(edges, end)))
        offsets = np.maximum(edges[columns] - start, 0)
        low[columns] = np.minimum(low[columns], np.minimum.reduceat(mono, offsets))
        high[columns] = np.maximum(high[columns], np.maximum.reduceat(mono, offsets))
        start = end
    if start == 0:
        raise AudioError(f"audio decodes to no frames ({len(data)} bytes)")
    return np.where(np.isfinite(low), low, 0), np.where(np.isfinite(high), high, 0)


def _mono_blocks(data: bytes, channels: int) -> Iterator[NDArray[np.float32]]:
    """The mono mix of `data`, block by block, in one buffer reused for every block (so each
    block must be used up before the next is asked for).

    Not `sf.blocks`: it counts down the frames the header claims, so a header that overstates
    them would have it yield stale buffers; reading until libsndfile returns nothing stops at
    the real end.
    """
    frames = np.empty((_WAVEFORM_BLOCK_FRAMES, channels), dtype=np.float32)
    mono = np.empty(_WAVEFORM_BLOCK_FRAMES, dtype=np.float32)
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            while len(block := source.read(out=frames)):
                yield np.mean(block, axis=1, dtype=np.float32, out=mono[: len(block)])
    except _SOUNDFILE_ERRORS as exc:
        raise AudioError(f"audio doesn't decode ({len(data)} bytes): {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    # LibsndfileError's str() names the BytesIO object; its error_string is the useful part.
    return str(getattr(exc, "error_string", None) or exc)


def _original_description(extension: str, subtype: str) -> str:
    if extension == "ogg":
        return {"VORBIS": "Ogg Vorbis", "OPUS": "Ogg Opus"}.get(subtype, "Ogg")
    return extension.upper()
