"""Audio bytes in, audio bytes out: probing, fitting a track under an upload limit, waveforms.

Everything here is synchronous and CPU-bound (libsndfile via soundfile, numpy, Pillow); callers
run it in a worker thread (`asyncio.to_thread`). Nothing here knows about Discord: the upload
limit is just a number of bytes.

`fit_to_limit` walks a ladder from best to worst quality and returns the first rung that fits:

    original bytes (if they fit)
    FLAC (lossless)
    Ogg Vorbis at falling quality (Ogg Opus instead when the sample rate is one Opus accepts)
    MP3 CBR at falling bitrates

Encoding a five-minute track takes seconds per rung (MP3 most of all), so rungs are sized before
they are encoded: constant-bitrate MP3 exactly from bitrate and duration, variable-rate codecs by
encoding a few short excerpts spread over the track and scaling up. A rung whose estimate is
clearly over the limit is skipped without ever encoding the whole track.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from numpy.typing import NDArray
from PIL import Image

log = logging.getLogger(__name__)

__all__ = [
    "AudioError",
    "AudioInfo",
    "FittedAudio",
    "fit_to_limit",
    "probe",
    "waveform_png",
]


class AudioError(Exception):
    """The bytes can't be decoded as audio. The message says why, for logs."""


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


@dataclass(frozen=True)
class FittedAudio:
    """Audio ready to upload: the original bytes, or a smaller encoding of them."""

    data: bytes = field(repr=False)
    extension: str  # wav | flac | ogg | mp3 (or the original's extension when untouched)
    description: str  # for people: "WAV", "FLAC", "Ogg Vorbis ~128 kbit/s", "MP3 96 kbit/s"
    transcoded: bool  # False when `data` is the original bytes, untouched


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


def fit_to_limit(data: bytes, limit_bytes: int) -> FittedAudio | None:
    """The best-quality version of `data` that is at most `limit_bytes` long, or None.

    The original bytes come back untouched when they fit; otherwise the audio is re-encoded
    (same channels and sample rate) down the ladder in the module docstring. None means even the
    lowest rung is too big. Raises AudioError when `data` isn't decodable audio.
    """
    info, subtype = _probe(data)
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


def waveform_png(data: bytes, width: int = 800, height: int = 160) -> bytes:
    """A PNG picture of the audio: per pixel column, the min..max of the mono mix.

    Silence draws as a one-pixel centre line. Raises AudioError when `data` isn't decodable audio
    and ValueError for a non-positive size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"waveform size must be positive, got {width}x{height}")
    _probe(data)
    samples = _read(data, "float32")
    mono = samples.mean(axis=1, dtype=np.float32)
    if len(mono) == 0:  # pragma: no cover - _probe rejects frameless audio
        low = high = np.zeros(width, dtype=np.float32)
    else:
        # Column c covers samples [edges[c], edges[c + 1]). With fewer samples than columns some
        # edges repeat, and reduceat then yields the single sample at that edge: still right.
        edges = np.arange(width, dtype=np.int64) * len(mono) // width
        low = np.minimum.reduceat(mono, edges)
        high = np.maximum.reduceat(mono, edges)
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


def _reason(exc: Exception) -> str:
    # LibsndfileError's str() names the BytesIO object; its error_string is the useful part.
    return str(getattr(exc, "error_string", None) or exc)


def _original_description(extension: str, subtype: str) -> str:
    if extension == "ogg":
        return {"VORBIS": "Ogg Vorbis", "OPUS": "Ogg Opus"}.get(subtype, "Ogg")
    return extension.upper()
