"""A refused request in the words its user knows: one sentence per pydantic error.

Kept apart from the model so that `request.py` reads as the rules themselves; this module only
words them. The option names are those of `/music` and `jambot generate`, not MusicGen's keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

# The names a user knows each field by (the /music options and CLI flags).
LABELS: dict[str, str] = {
    "model_version": "model",
    "classifier_free_guidance": "guidance",
    "normalization_strategy": "normalization",
    "output_format": "output_format",
    "input_audio": "audio",
}


def describe_error(error: ErrorDetails, fields: Mapping[str, FieldInfo], max_duration: int) -> str:
    """Turn one pydantic error into a sentence naming the option as the user knows it.

    `fields` are the model's, so that a range is quoted from the same bounds that refused it.
    """
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
    bounds = describe_bounds(fields.get(field))
    if bounds is not None:
        return f"{label} must be {bounds}."
    if kind == "string_too_long":
        return f"{label} must be at most {ctx.get('max_length')} characters long."
    return _sentence(f"{label} is invalid: {error['msg']}")


def describe_bounds(info: FieldInfo | None) -> str | None:
    """A field's numeric range in words ("between 1 and 30", "greater than 0 and at most 5"),
    read from its ``Field(ge=, gt=, le=)`` constraints; None if it has no full range."""
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
