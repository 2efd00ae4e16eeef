"""File names for tracks, shared by the terminal and Discord fronts."""

from __future__ import annotations

import re
import unicodedata

MAX_STEM = 48


def track_filename(prompt: str, seed: int | None, extension: str) -> str:
    """`warm-lofi-beat-seed1234.wav`: ASCII, no path characters, never empty."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:MAX_STEM].rstrip("-")
    stem = stem or "track"
    suffix = f"-seed{seed}" if seed is not None else ""
    return f"{stem}{suffix}.{extension}"
