"""Input validation for meta/musicgen: the API's JSON-schema check, then the model's own.

The first refuses a create with 422 ``Input validation failed``; the second lets the prediction
be created (and billed) and then fails it, as ``predict()`` raising ``ValueError`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlparse

MODEL_VERSIONS: Final = ("stereo-melody-large", "stereo-large", "melody-large", "large")
NORMALIZATION_STRATEGIES: Final = ("loudness", "clip", "peak", "rms")
OUTPUT_FORMATS: Final = ("wav", "mp3")


@dataclass(frozen=True)
class _InputField:
    type: Literal["string", "integer", "number", "boolean"]
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    format: str | None = None


MUSICGEN_INPUTS: Final[Mapping[str, _InputField]] = {
    "model_version": _InputField("string", choices=MODEL_VERSIONS),
    "prompt": _InputField("string"),
    "input_audio": _InputField("string", format="uri"),
    "duration": _InputField("integer"),
    "continuation": _InputField("boolean"),
    "continuation_start": _InputField("integer", minimum=0),
    "continuation_end": _InputField("integer", minimum=0),
    "multi_band_diffusion": _InputField("boolean"),
    "normalization_strategy": _InputField("string", choices=NORMALIZATION_STRATEGIES),
    "top_k": _InputField("integer"),
    "top_p": _InputField("number"),
    "temperature": _InputField("number"),
    "classifier_free_guidance": _InputField("integer"),
    "output_format": _InputField("string", choices=OUTPUT_FORMATS),
    "seed": _InputField("integer"),
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def validate_musicgen_input(payload: Any) -> list[dict[str, str]]:
    """Check ``payload`` (the request's ``input``) like Replicate's schema validation.

    Returns the ``invalid_fields`` entries (empty when valid). Unknown keys are ignored, as
    Replicate ignores them; ``null`` for a known key is a type error, as it is on Replicate.
    """
    if payload is None:
        return [{"type": "required", "field": "(root)", "description": "input is required"}]
    given = _json_type(payload)
    if given != "object":
        return [
            {
                "type": "invalid_type",
                "field": "input",
                "description": f"Invalid type. Expected: object, given: {given}",
            }
        ]
    problems: list[dict[str, str]] = []
    for name, value in payload.items():
        spec = MUSICGEN_INPUTS.get(name)
        if spec is None:
            continue
        where = f"input.{name}"
        kind = _json_type(value)
        type_ok = kind == spec.type or (spec.type == "number" and kind == "integer")
        if not type_ok:
            problems.append(
                {
                    "type": "invalid_type",
                    "field": where,
                    "description": f"Invalid type. Expected: {spec.type}, given: {kind}",
                }
            )
            continue
        if spec.choices and value not in spec.choices:
            allowed = ", ".join(f'"{c}"' for c in spec.choices)
            problems.append(
                {
                    "type": "enum",
                    "field": where,
                    "description": f"{name} must be one of the following: {allowed}",
                }
            )
        if spec.minimum is not None and value < spec.minimum:
            problems.append(
                {
                    "type": "number_gte",
                    "field": where,
                    "description": f"Must be greater than or equal to {spec.minimum}",
                }
            )
        if spec.format == "uri" and not urlparse(value).scheme:
            problems.append(
                {
                    "type": "format",
                    "field": where,
                    "description": "Does not match format 'uri'",
                }
            )
    return problems


def model_rule_error(payload: Mapping[str, Any]) -> str | None:
    """The ``ValueError`` text ``predict()`` of meta/musicgen raises for these inputs, if any."""
    prompt = payload.get("prompt")
    input_audio = payload.get("input_audio")
    model_version = payload.get("model_version", "stereo-melody-large")
    continuation = bool(payload.get("continuation", False))
    if prompt is None and input_audio is None:
        return "Must provide either prompt or input_audio"
    if continuation and not input_audio:
        return "Must provide `input_audio` if continuation is `True`."
    if model_version in ("stereo-large", "large") and input_audio and not continuation:
        return (
            "`stereo-large` and `large` model does not support melody input. Set "
            "`model_version='stereo-melody-large'` or `model_version='melody-large'` to "
            "condition on audio input."
        )
    if "stereo" in model_version and payload.get("multi_band_diffusion", False):
        return "Multi-Band Diffusion is only available with non-stereo models."
    start = payload.get("continuation_start") or 0
    end = payload.get("continuation_end")
    if input_audio and end is not None and end != -1 and start > end:
        return "`continuation_start` must be less than or equal to `continuation_end`"
    return None
