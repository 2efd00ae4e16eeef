"""The validated request: the single place where a generation's inputs are checked.

Ranges and cross-field rules follow MusicGen's own `predict.py` on Replicate, so a request that
would fail there (after being billed) fails here first, for free. Every rejection becomes one
sentence a Discord user understands; see `MusicRequest.parse`.
"""

from __future__ import annotations

import math
import unicodedata
from enum import StrEnum
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from bot.music.errors import InvalidRequestError

MAX_PROMPT_LENGTH = 1000
DEFAULT_MAX_DURATION = 30
ABSOLUTE_MAX_DURATION = 300
MAX_TEMPERATURE = 5.0
MAX_TOP_K = 2048
MAX_GUIDANCE = 20
MAX_SEED = 2**32 - 1
MAX_URL_LENGTH = 2048
MAX_DATA_URI_LENGTH = 7_000_000  # base64 of a 5 MB clip, for local files


class ModelVersion(StrEnum):
    STEREO_MELODY_LARGE = "stereo-melody-large"
    STEREO_LARGE = "stereo-large"
    MELODY_LARGE = "melody-large"
    LARGE = "large"

    @property
    def is_stereo(self) -> bool:
        return self.value.startswith("stereo-")

    @property
    def takes_melody(self) -> bool:
        return "melody" in self.value


class AudioFormat(StrEnum):
    WAV = "wav"
    MP3 = "mp3"


class Normalization(StrEnum):
    LOUDNESS = "loudness"
    CLIP = "clip"
    PEAK = "peak"
    RMS = "rms"


# The names a user knows each field by (the /music options and CLI flags).
LABELS: dict[str, str] = {
    "model_version": "model",
    "classifier_free_guidance": "guidance",
    "normalization_strategy": "normalization",
    "output_format": "output_format",
    "input_audio": "audio",
}


# Bidirectional controls (embeddings, overrides, isolates, marks) let a prompt reorder the text
# around it wherever it is shown, the public embed included; they carry no meaning for the model.
_BIDI_CONTROLS = dict.fromkeys(
    [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
)

# A prompt made only of these shows as nothing (or as blank space) yet would be billed: format
# characters such as zero-width spaces, marks with no letter to sit on, separators, unassigned
# and private code points, and the letters and symbols that are drawn blank.
_INVISIBLE_CATEGORIES = frozenset(
    {"Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Mc", "Zs", "Zl", "Zp"}
)
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _is_visible(ch: str) -> bool:
    return ch not in _BLANK_GLYPHS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


def _bad(message: str) -> PydanticCustomError:
    return PydanticCustomError("jambot", message)


class MusicRequest(BaseModel):
    """One generation's inputs, validated. Immutable once built."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: str
    duration: int = Field(8, ge=1, le=ABSOLUTE_MAX_DURATION)
    model_version: ModelVersion = ModelVersion.STEREO_LARGE
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE)
    top_k: int = Field(250, ge=0, le=MAX_TOP_K)
    top_p: float = Field(0.0, ge=0, le=1)
    classifier_free_guidance: int = Field(3, ge=0, le=MAX_GUIDANCE)
    output_format: AudioFormat = AudioFormat.WAV
    normalization_strategy: Normalization = Normalization.LOUDNESS
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    input_audio: str | None = None
    continuation: bool = False
    continuation_start: int = Field(0, ge=0, le=ABSOLUTE_MAX_DURATION)
    continuation_end: int | None = Field(None, ge=0, le=ABSOLUTE_MAX_DURATION)
    multi_band_diffusion: bool = False

    @field_validator("prompt")
    @classmethod
    def _clean_prompt(cls, value: str) -> str:
        if not value.strip():
            raise _bad("prompt can't be empty: describe the music you want")
        value = value.translate(_BIDI_CONTROLS).strip()
        if len(value) > MAX_PROMPT_LENGTH:
            raise _bad(f"prompt must be at most {MAX_PROMPT_LENGTH} characters long")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise _bad("prompt can't contain control characters")
        if not any(_is_visible(ch) for ch in value):
            raise _bad("prompt must contain some visible text: describe the music you want")
        return value

    @field_validator("input_audio")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.startswith("data:audio/"):
            if len(value) > MAX_DATA_URI_LENGTH:
                raise _bad("audio must be a file of at most 5 MB")
            return value
        if not value.startswith(("https://", "http://")) or len(value) > MAX_URL_LENGTH:
            raise _bad("audio must be an http(s) link to an audio file")
        return value

    @field_validator("duration")
    @classmethod
    def _duration_cap(cls, value: int, info: ValidationInfo) -> int:
        cap = (info.context or {}).get("max_duration", DEFAULT_MAX_DURATION)
        if value > cap:
            raise _bad(f"duration must be between 1 and {cap} seconds")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        model = self.model_version
        if self.continuation and self.input_audio is None:
            raise _bad("continuation needs an audio clip to continue: attach one with audio")
        if self.input_audio is not None and not self.continuation and not model.takes_melody:
            raise _bad(
                f"the {model.value} model can't follow a melody: choose stereo-melody-large or "
                "melody-large, or turn on continuation to extend the clip"
            )
        if self.multi_band_diffusion and model.is_stereo:
            raise _bad("multi-band diffusion only works with the mono models (large, melody-large)")
        if not self.continuation and (self.continuation_start or self.continuation_end is not None):
            raise _bad("continuation_start and continuation_end only apply with continuation on")
        end = self.continuation_end
        if end is not None and end <= self.continuation_start:
            raise _bad("continuation_end must come after continuation_start")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any], *, max_duration: int = DEFAULT_MAX_DURATION) -> Self:
        """Validate `data`; on failure raise InvalidRequestError with one readable sentence."""
        try:
            return cls.model_validate(data, context={"max_duration": max_duration})
        except ValidationError as exc:
            sentence = describe_error(exc.errors()[0], max_duration)
            raise InvalidRequestError(sentence, f"invalid request: {sentence}") from None

    def to_replicate_input(self) -> dict[str, Any]:
        """The exact `input` object meta/musicgen expects (its own key names)."""
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "model_version": self.model_version.value,
            "duration": self.duration,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "classifier_free_guidance": self.classifier_free_guidance,
            "output_format": self.output_format.value,
            "normalization_strategy": self.normalization_strategy.value,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.input_audio is not None:
            body["input_audio"] = self.input_audio
            body["continuation"] = self.continuation
            if self.continuation:
                body["continuation_start"] = self.continuation_start
                if self.continuation_end is not None:
                    body["continuation_end"] = self.continuation_end
        if self.multi_band_diffusion:
            body["multi_band_diffusion"] = True
        return body


def describe_error(error: ErrorDetails, max_duration: int = DEFAULT_MAX_DURATION) -> str:
    """Turn one pydantic error into a sentence naming the option as the user knows it."""
    field = str(error["loc"][0]) if error["loc"] else ""
    label = LABELS.get(field, field)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "jambot":
        return _sentence(error["msg"])
    if field == "duration" and kind in {"greater_than_equal", "less_than_equal"}:
        return f"duration must be between 1 and {max_duration} seconds."
    if kind == "missing":
        return f"{label} is required."
    if kind == "extra_forbidden":
        return f"There's no option called {label}."
    if kind == "enum":
        return f"{label} must be one of: {ctx.get('expected', '')}."
    if kind in {"finite_number"} or (
        isinstance(error.get("input"), float) and not math.isfinite(error["input"])
    ):
        return f"{label} must be a real number."
    if kind.startswith(("int_", "float_", "bool_", "string_")) and kind != "string_too_long":
        noun = {"int": "a whole number", "float": "a number", "bool": "true or false"}
        return f"{label} must be {noun.get(kind.split('_')[0], 'text')}."
    bounds = _bounds(field)
    if bounds is not None:
        return f"{label} must be {bounds}."
    if kind == "string_too_long":
        return f"{label} must be at most {ctx.get('max_length')} characters long."
    return _sentence(f"{label} is invalid: {error['msg']}")


def _bounds(field: str) -> str | None:
    info = MusicRequest.model_fields.get(field)
    if info is None:
        return None
    low = high = None
    exclusive_low = False
    for meta in info.metadata:
        low = getattr(meta, "ge", low)
        if getattr(meta, "gt", None) is not None:
            low, exclusive_low = meta.gt, True
        high = getattr(meta, "le", high)
    if low is None or high is None:
        return None
    if exclusive_low:
        return f"greater than {low} and at most {high}"
    return f"between {low} and {high}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."
