"""The validated request: the single place where a generation's inputs are checked.

Ranges and cross-field rules follow MusicGen's own `predict.py` on Replicate, so a request that
would fail there (after being billed) fails here first, for free. Every rejection becomes one
sentence a Discord user understands (worded by `bot.music.rejections`).

Every request comes to be through one of the constructors here: `from_options` (a command's
options), `from_stored` (a job's request read back), `with_new_seed`, `varied` and `continuing`
(derived from a delivered track's request). None of them knows where its inputs came from.
"""

from __future__ import annotations

import random
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
from pydantic_core import PydanticCustomError

from bot.music.errors import InvalidRequestError
from bot.music.rejections import describe_error

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

    # -- the ways a request comes to be --------------------------------------------------

    @classmethod
    def parse(cls, data: dict[str, Any], *, max_duration: int = DEFAULT_MAX_DURATION) -> Self:
        """Validate `data` (field names); on failure raise InvalidRequestError with one
        readable sentence. Every other constructor but `from_stored` comes through here."""
        try:
            return cls.model_validate(data, context={"max_duration": max_duration})
        except ValidationError as exc:
            sentence = describe_error(exc.errors()[0], cls.model_fields, max_duration)
            raise InvalidRequestError(sentence, f"invalid request: {sentence}") from None

    @classmethod
    def from_options(
        cls,
        prompt: str,
        *,
        duration: int | None = None,
        model: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance: int | None = None,
        output_format: str | None = None,
        normalization: str | None = None,
        seed: int | None = None,
        input_audio: str | None = None,
        continuation: bool = False,
        max_duration: int = DEFAULT_MAX_DURATION,
    ) -> Self:
        """A request from the options as `/music` and `jambot generate` name them.

        An option left None takes the field's default, so the defaults are kept in one place.
        """
        given = {
            "prompt": prompt,
            "duration": duration,
            "model_version": model,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "classifier_free_guidance": guidance,
            "output_format": output_format,
            "normalization_strategy": normalization,
            "seed": seed,
            "input_audio": input_audio,
            "continuation": continuation,
        }
        options = {name: value for name, value in given.items() if value is not None}
        return cls.parse(options, max_duration=max_duration)

    @classmethod
    def from_stored(cls, json_text: str) -> Self:
        """A job's request as it was accepted (`model_dump_json`).

        Checked against ABSOLUTE_MAX_DURATION, not today's setting: lowering the cap must not
        strand jobs already accepted. Text that isn't a request raises ValueError (pydantic's
        ValidationError), not a user sentence: stored text is ours, so that is a bug or damage.
        """
        return cls.model_validate_json(json_text, context={"max_duration": ABSOLUTE_MAX_DURATION})

    def with_new_seed(
        self, rng_or_seed: random.Random | int, *, max_duration: int = ABSOLUTE_MAX_DURATION
    ) -> Self:
        """The same request with another seed: a fixed seed is replaced too, or the track
        would come back the same. `rng_or_seed` is the seed, or draws one unlike the old."""
        if isinstance(rng_or_seed, int):
            return self._changed(max_duration, seed=rng_or_seed)
        seed = self.seed
        while seed == self.seed:
            seed = rng_or_seed.randint(0, MAX_SEED)
        return self._changed(max_duration, seed=seed)

    def varied(
        self, seed: int, *, step: float = 0.1, max_duration: int = ABSOLUTE_MAX_DURATION
    ) -> Self:
        """The same request with this seed and the temperature `step` higher (lower where that
        would pass MAX_TEMPERATURE): a variation, not a repeat. Rounded so that 0.7 + 0.1 shows
        as 0.8, not 0.7999999999999999."""
        if step <= 0:
            raise ValueError(f"step must be positive, not {step}")
        temperature = round(self.temperature + step, 6)
        if temperature > MAX_TEMPERATURE:
            temperature = round(self.temperature - step, 6)
        return self._changed(max_duration, seed=seed, temperature=temperature)

    def continuing(self, audio_uri: str, *, duration: int, max_duration: int) -> Self:
        """This request's settings, continuing the audio at `audio_uri`.

        `audio_uri` comes from `MusicBackend.upload_audio`, never an earlier output URL (dead
        within the hour). `duration` is the total length, the clip included. Every model
        continues audio (only following a melody needs a melody model), so the model stays;
        the old continuation window belonged to another clip, so it goes.
        """
        return self._changed(
            max_duration,
            input_audio=audio_uri,
            continuation=True,
            continuation_start=0,
            continuation_end=None,
            duration=duration,
        )

    def _changed(self, max_duration: int, **changes: Any) -> Self:
        """A copy with `changes`, validated again as a new request is: a paid job's inputs
        are never trusted unchecked."""
        return self.parse({**self.model_dump(), **changes}, max_duration=max_duration)

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
