"""The audio at a fake output URL: real files, so the bot's audio checks run for real."""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf


def render_audio(
    *, duration: float, channels: int, sample_rate: int, output_format: str, seed: int = 0
) -> bytes:
    """A quiet chord with a pulse and a little noise: compresses like music, is not silence."""
    frames = max(0, round(duration * sample_rate))
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64) / sample_rate
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    chord = np.zeros(frames)
    for ratio, gain in ((1.0, 0.5), (1.26, 0.3), (1.5, 0.3), (2.0, 0.2)):
        chord += gain * np.sin(2 * math.pi * root * ratio * t + rng.uniform(0, 2 * math.pi))
    pulse = 0.55 + 0.45 * np.abs(np.sin(math.pi * 2.0 * t))  # 120 bpm
    noise = np.convolve(rng.standard_normal(frames), np.ones(8) / 8, mode="same")
    mono = 0.18 * chord * pulse + 0.03 * noise
    if channels == 2:
        pan = 0.15 * np.sin(2 * math.pi * 0.25 * t)
        data = np.stack([mono * (1 - pan), mono * (1 + pan)], axis=1)
    else:
        data = mono[:, None]
    data = np.clip(data, -1.0, 1.0).astype(np.float32)
    buffer = io.BytesIO()
    if output_format == "mp3":
        sf.write(buffer, data, sample_rate, format="MP3")
    else:
        sf.write(buffer, data, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
