"""What a music backend offers, and what it hands back. Replicate is the one implementation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.music.request import MusicRequest


@dataclass(frozen=True)
class Progress:
    """One observation of a running generation, for progress displays."""

    status: str  # starting | processing | downloading
    elapsed: float  # seconds since the prediction was created
    percent: float | None = None  # from the model's progress bar, when its logs show one
    eta: float | None = None  # seconds left, estimated from the percentage
    seed: int | None = None  # from the model's "Using seed N" log line


@dataclass(frozen=True)
class Track:
    """A finished track: the audio bytes themselves, never just a link."""

    data: bytes = field(repr=False)
    format: str  # file extension of `data`: wav | mp3
    prediction_id: str
    model_version: str
    seed: int | None
    predict_time: float | None  # GPU seconds billed by Replicate
    elapsed: float  # wall seconds from create (or resume) to bytes in hand
    output_url: str  # dies an hour after creation; only for a last-resort link
    url_expires_at: datetime | None


ProgressCallback = Callable[[Progress], Awaitable[None]]
CreatedCallback = Callable[[str], Awaitable[None]]


class MusicBackend(Protocol):
    async def generate(
        self,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
        on_created: CreatedCallback | None = None,
    ) -> Track:
        """Create a prediction, report its id, wait for it and download the audio."""
        ...

    async def resume(
        self,
        prediction_id: str,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Track:
        """Wait for and download an existing prediction; never creates one."""
        ...

    async def cancel(self, prediction_id: str) -> None:
        """Ask the backend to stop a prediction (best effort)."""
        ...

    async def upload_audio(
        self, data: bytes, *, filename: str, content_type: str = "audio/wav"
    ) -> str:
        """A URI for the audio `data` that a request can carry as `input_audio`.

        It must still resolve when the prediction starts, so it is never the output URL of an
        earlier track (Replicate deletes outputs after an hour): a data URI or a stored file.
        """
        ...

    async def aclose(self) -> None: ...
