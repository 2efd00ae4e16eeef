"""A local stand-in for the Replicate HTTP API, serving ``meta/musicgen``.

The fake answers in the shapes the official ``replicate`` client (1.0.x) parses, so tests can
point ``replicate.Client(base_url=fake.base_url)`` at it. It models:

* bearer-token auth on every ``/v1`` route (output files are public, like replicate.delivery);
* ``POST /v1/predictions`` and ``POST /v1/models/{owner}/{name}/predictions`` with the
  model's input schema validated the way Replicate does (422 ``Input validation failed``);
* predictions whose status is derived from time: ``starting`` -> ``processing`` (logs grow
  with ``Using seed N`` and tqdm-style progress) -> an outcome chosen by the test;
* the model's own run-time checks, which end a prediction ``failed`` (not a 422);
* ``POST /v1/predictions/{id}/cancel``, ``Prefer: wait`` on create;
* real audio files (WAV or MP3) at the output URL;
* fault injection (HTTP errors with Replicate's RFC 7807 bodies, dropped connections, delays,
  and 2xx answers that are not a prediction: a proxy's HTML page, JSON without ``id``);
* a record of every request and the status it was answered with (``requests``).

Run it by hand with ``python -m tests.fakes.replicate --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import logging
import math
import random
import secrets
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import urlparse

import numpy as np
import soundfile as sf
from aiohttp import web
from aiohttp.typedefs import Handler

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TOKEN",
    "DEFAULT_VERSION",
    "MODEL_VERSIONS",
    "CreateRecord",
    "FakePrediction",
    "FakeReplicate",
    "Headers",
    "HttpFault",
    "Outcome",
    "RequestRecord",
    "main",
    "render_audio",
    "validate_musicgen_input",
]

DEFAULT_TOKEN: Final = "r8_test_token"
DEFAULT_MODEL: Final = "meta/musicgen"
DEFAULT_VERSION: Final = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"

PROBLEM_JSON: Final = "application/problem+json"
TOKENS_PER_SECOND: Final = 50  # MusicGen generates 50 EnCodec frames per second of audio
TERMINAL_STATUSES: Final = frozenset({"succeeded", "failed", "canceled", "aborted"})

MODEL_VERSIONS: Final = ("stereo-melody-large", "stereo-large", "melody-large", "large")
NORMALIZATION_STRATEGIES: Final = ("loudness", "clip", "peak", "rms")
OUTPUT_FORMATS: Final = ("wav", "mp3")

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
OutcomeKind = Literal["succeeded", "failed", "canceled", "aborted", "malformed_output", "no_output"]


# --------------------------------------------------------------------------------------------
# Faults and outcomes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpFault:
    """An answer the fake gives instead of the normal one.

    ``body`` (any JSON value) is sent as ``application/problem+json``; ``text`` (if set) is sent
    verbatim instead, with the ``Content-Type`` from ``headers`` (default ``text/html``).
    ``delay`` seconds pass before answering. ``drop_connection`` closes the connection without
    any answer.
    """

    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    text: str | None = None
    delay: float = 0.0
    drop_connection: bool = False

    @classmethod
    def unauthenticated(cls) -> Self:
        return cls(
            401,
            {
                "title": "Unauthenticated",
                "detail": "You did not pass a valid authentication token",
                "status": 401,
            },
        )

    @classmethod
    def payment_required(cls) -> Self:
        return cls(
            402,
            {
                "title": "Insufficient credit",
                "detail": (
                    "You have insufficient credit to run this model. Go to "
                    "https://replicate.com/account/billing#billing to purchase credit. Once you "
                    "purchase credit, please wait a few minutes before trying again."
                ),
                "status": 402,
            },
        )

    @classmethod
    def forbidden(cls) -> Self:
        return cls(
            403,
            {
                "title": "Forbidden",
                "detail": "You do not have permission to perform this action.",
                "status": 403,
            },
        )

    @classmethod
    def not_found(cls) -> Self:
        return cls(404, {"detail": "Not found.", "status": 404})

    @classmethod
    def invalid_version(cls) -> Self:
        return cls(
            422,
            {
                "title": "Invalid version or not permitted",
                "detail": (
                    "The specified version does not exist (or perhaps you don't have "
                    "permission to use it?)"
                ),
                "status": 422,
            },
        )

    @classmethod
    def input_invalid(cls, fields: Iterable[Mapping[str, str]] | None = None) -> Self:
        """422 ``Input validation failed``; ``fields`` are ``{type, field, description}``."""
        invalid = [dict(f) for f in fields] if fields is not None else []
        if not invalid:
            invalid = [{"type": "required", "field": "input", "description": "prompt is required"}]
        detail = "".join(f"- {f['field']}: {f['description']}\n" for f in invalid)
        return cls(
            422,
            {
                "detail": detail,
                "status": 422,
                "title": "Input validation failed",
                "invalid_fields": invalid,
            },
        )

    @classmethod
    def throttled(cls, retry_after: int = 1) -> Self:
        """429 with ``Retry-After``; the detail names the same number of seconds."""
        return cls(
            429,
            {
                "detail": f"Request was throttled. Your rate limit resets in ~{retry_after}s.",
                "status": 429,
            },
            headers={"Retry-After": str(retry_after)},
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Self:
        """A 5xx. 500 comes as a JSON problem; 502/503/504 as the HTML page a proxy sends."""
        if status == 500:
            return cls(500, {"title": "Internal Server Error", "detail": "", "status": 500})
        reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(
            status, "Server Error"
        )
        page = (
            f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
        )
        return cls(status, text=page, headers={"Content-Type": "text/html"})

    @classmethod
    def html_page(cls, status: int = 200) -> Self:
        """A ``text/html`` page where JSON belongs, e.g. a captive portal or a misrouted proxy."""
        page = (
            "<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head>\n"
            "<body><h1>Please sign in</h1><p>Accept the terms to continue.</p></body></html>\n"
        )
        return cls(status, text=page, headers={"Content-Type": "text/html"})

    @classmethod
    def json_answer(
        cls, value: Any, *, status: int = 200, content_type: str = "application/json"
    ) -> Self:
        """Any JSON ``value`` (a list, a dict missing fields) sent as ``content_type``."""
        return cls(status, text=json.dumps(value), headers={"Content-Type": content_type})

    @classmethod
    def json_without_id(cls) -> Self:
        """200 with prediction-like JSON that has no ``id``."""
        return cls.json_answer({"status": "processing", "output": None, "logs": "", "error": None})

    @classmethod
    def empty_answer(cls, status: int = 200) -> Self:
        """``status`` with ``Content-Type: application/json`` and no body at all."""
        return cls(status, text="", headers={"Content-Type": "application/json"})

    @classmethod
    def disconnect(cls) -> Self:
        """Close the connection without answering (the client sees a network error)."""
        return cls(0, drop_connection=True)

    @classmethod
    def timeout(cls, seconds: float = 30.0) -> Self:
        """Hold the request ``seconds`` without answering, then close the connection."""
        return cls(0, delay=seconds, drop_connection=True)

    def delayed(self, seconds: float) -> HttpFault:
        """The same fault, answered after ``seconds``."""
        return dataclasses.replace(self, delay=seconds)

    def to_response(self) -> web.Response:
        headers = dict(self.headers or {})
        content_type = PROBLEM_JSON
        for key in list(headers):
            if key.lower() == "content-type":
                content_type = headers.pop(key)
        if self.text is not None:
            if content_type == PROBLEM_JSON:
                content_type = "text/html"
            return web.Response(
                status=self.status, text=self.text, content_type=content_type, headers=headers
            )
        if self.body is None:
            return web.Response(status=self.status, headers=headers)
        return web.Response(
            status=self.status,
            text=json.dumps(self.body),
            content_type=content_type,
            headers=headers,
        )


@dataclass(frozen=True)
class Outcome:
    """How a prediction ends once its processing time is over (or ``finish()`` is called)."""

    kind: OutcomeKind
    error: str | None = None
    output: Any = None

    @classmethod
    def succeeded(cls) -> Self:
        return cls("succeeded")

    @classmethod
    def failed(
        cls,
        error: str = (
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity; "
            "75.31 GiB already allocated; 1.22 GiB free; 76.02 GiB reserved in total by PyTorch)"
        ),
    ) -> Self:
        return cls("failed", error=error)

    @classmethod
    def canceled(cls) -> Self:
        return cls("canceled")

    @classmethod
    def aborted(cls) -> Self:
        return cls("aborted")

    @classmethod
    def malformed_output(cls, output: Any = 12345) -> Self:
        """Status ``succeeded`` with an output that is not one URL string."""
        return cls("malformed_output", output=output)

    @classmethod
    def no_output(cls) -> Self:
        return cls("no_output")

    @property
    def status(self) -> Status:
        statuses: dict[OutcomeKind, Status] = {
            "succeeded": "succeeded",
            "malformed_output": "succeeded",
            "no_output": "succeeded",
            "failed": "failed",
            "canceled": "canceled",
            "aborted": "aborted",
        }
        return statuses[self.kind]


# --------------------------------------------------------------------------------------------
# Input validation (the API's JSON-schema check, then the model's own run-time checks)
# --------------------------------------------------------------------------------------------


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


def _model_rule_error(payload: Mapping[str, Any]) -> str | None:
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


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


class Headers(dict[str, str]):
    """Request headers: keys stored lower-case, looked up case-insensitively."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class CreateRecord:
    """One create request that reached the fake, whatever it was answered."""

    body: Any
    headers: Headers
    at: float
    path: str
    status: int = 0  # HTTP status answered; 0 when the connection was dropped
    prediction_id: str | None = None


@dataclass
class RequestRecord:
    """One request that reached the fake: ``route`` is create, poll, cancel, download or other."""

    method: str
    path: str
    route: str
    headers: Headers
    at: float
    status: int = 0  # HTTP status answered; 0 when the connection was dropped


def _new_prediction_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _progress_bar(fraction: float, width: int = 10) -> str:
    eighths = "▏▎▍▌▋▊▉"
    filled = fraction * width
    full = int(filled)
    bar = "█" * full
    rest = int((filled - full) * 8)
    if full < width:
        bar += (eighths[rest - 1] if rest > 0 else " ") + " " * (width - full - 1)
    return bar


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


class FakePrediction:
    """A prediction held by the fake; its status advances with time when read.

    ``start_seconds`` and ``run_seconds`` are copied from the fake at creation and may be
    changed per prediction. Times (``created_at``, ``started_at``, ``finished_at``) are
    ``time.monotonic()`` values.
    """

    def __init__(
        self,
        *,
        id: str,
        model: str,
        version: str,
        input: dict[str, Any],
        outcome: Outcome,
        created_at: float,
        start_seconds: float,
        run_seconds: float | None,
        seed: int,
        rule_error: str | None,
    ) -> None:
        self.id = id
        self.model = model
        self.version = version
        self.input = input
        self.outcome = outcome
        self.created_at = created_at
        self.start_seconds = start_seconds
        self.run_seconds = run_seconds
        self.seed = seed
        self.rule_error = rule_error
        self.data_removed = False
        self._status: Status = "starting"
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._fraction_at_end = 0.0

    # ---- derived state ------------------------------------------------------------------

    @property
    def status(self) -> Status:
        self.refresh()
        return self._status

    @property
    def started_at(self) -> float | None:
        self.refresh()
        return self._started_at

    @property
    def finished_at(self) -> float | None:
        self.refresh()
        return self._finished_at

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> int:
        return int(self.input.get("duration", 8))

    @property
    def channels(self) -> int:
        return (
            2 if str(self.input.get("model_version", MODEL_VERSIONS[0])).startswith("stereo") else 1
        )

    @property
    def output_name(self) -> str:
        return f"out.{self.input.get('output_format', 'wav')}"

    def refresh(self, now: float | None = None) -> None:
        if self._status in TERMINAL_STATUSES:
            return
        now = time.monotonic() if now is None else now
        start_at = self.created_at + self.start_seconds
        if now < start_at:
            return
        if self.outcome.kind == "aborted":
            self._end(start_at, "aborted")
            return
        if self._started_at is None:
            self._started_at = start_at
            self._status = "processing"
        if self.rule_error is not None:
            self._end(self._started_at, "failed")
            return
        if self.run_seconds is not None and now >= self._started_at + self.run_seconds:
            self._end(self._started_at + self.run_seconds, self.outcome.status)

    def finish(self, now: float | None = None) -> None:
        """Reach the outcome now (no-op when already terminal)."""
        now = time.monotonic() if now is None else now
        self.refresh(now)
        if self._status in TERMINAL_STATUSES:
            return
        if self.outcome.kind == "aborted":
            self._end(now, "aborted")
            return
        if self._started_at is None:
            self._started_at = now
        status: Status = "failed" if self.rule_error is not None else self.outcome.status
        self._end(now, status)

    def cancel(self, now: float | None = None) -> bool:
        """Cancel unless terminal; returns whether the status changed."""
        now = time.monotonic() if now is None else now
        self.refresh(now)
        if self._status in TERMINAL_STATUSES:
            return False
        self._end(now, "canceled")
        return True

    def _end(self, at: float, status: Status) -> None:
        if status == "succeeded":
            self._fraction_at_end = 1.0
        elif self._started_at is not None:
            self._fraction_at_end = self._fraction(at)
        self._status = status
        self._finished_at = at

    def _fraction(self, now: float) -> float:
        if self._started_at is None:
            return 0.0
        elapsed = max(0.0, now - self._started_at)
        if self.run_seconds is None:
            return min(0.99, elapsed / (elapsed + 5.0))
        if self.run_seconds <= 0:
            return 0.99
        return min(0.99, elapsed / self.run_seconds)

    # ---- JSON ---------------------------------------------------------------------------

    def error_text(self) -> str | None:
        if self._status != "failed":
            return None
        return self.rule_error if self.rule_error is not None else self.outcome.error

    def output_value(self, base_url: str) -> Any:
        if self._status != "succeeded" or self.data_removed:
            return None
        if self.outcome.kind == "malformed_output":
            return self.outcome.output
        if self.outcome.kind == "no_output":
            return None
        return f"{base_url}/files/{self.id}/{self.output_name}"

    def logs(self, now: float) -> str:
        if self._started_at is None or self.data_removed:
            return ""
        if self.rule_error is not None:
            return _traceback("ValueError", self.rule_error)
        fraction = self._fraction(now) if self._finished_at is None else self._fraction_at_end
        total = self.duration * TOKENS_PER_SECOND
        elapsed = (now if self._finished_at is None else self._finished_at) - self._started_at
        lines = [f"Using seed {self.seed}"]
        steps = sorted({*(k / 10 for k in range(int(fraction * 10) + 1)), fraction})
        for step in steps:
            current = int(total * step)
            spent = elapsed * (step / fraction) if fraction > 0 else 0.0
            rate = current / spent if spent > 0 else 0.0
            left = (total - current) / rate if rate > 0 else 0.0
            rate_text = f"{rate:.2f}it/s" if spent > 0 else "?it/s"
            left_text = _clock(left) if spent > 0 else "?"
            lines.append(
                f"{round(step * 100):3d}%|{_progress_bar(step)}| {current}/{total} "
                f"[{_clock(spent)}<{left_text}, {rate_text}]"
            )
        text = "\n".join(lines) + "\n"
        if self._status == "failed":
            error = self.outcome.error or "RuntimeError"
            kind = "torch.OutOfMemoryError" if "out of memory" in error.lower() else "RuntimeError"
            text += _traceback(kind, error)
        return text

    def to_json(self, base_url: str, wall: WallClock, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        self.refresh(now)
        metrics: dict[str, Any] = {}
        if (
            self._status in TERMINAL_STATUSES
            and self._started_at is not None
            and self._finished_at is not None
        ):
            metrics = {"predict_time": round(self._finished_at - self._started_at, 6)}
        get_url = f"{base_url}/v1/predictions/{self.id}"
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": None if self.data_removed else self.input,
            "logs": self.logs(now),
            "output": self.output_value(base_url),
            "data_removed": self.data_removed,
            "error": self.error_text(),
            "status": self._status,
            "source": "api",
            "created_at": wall.iso(self.created_at),
            "started_at": wall.iso(self._started_at),
            "completed_at": wall.iso(self._finished_at),
            "urls": {
                "cancel": f"{get_url}/cancel",
                "get": get_url,
                "stream": f"{get_url}/stream",
                "web": f"https://replicate.com/p/{self.id}",
            },
            "metrics": metrics,
        }


def _traceback(kind: str, message: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/root/.pyenv/versions/3.11.10/lib/python3.11/site-packages/cog/server/'
        'worker.py", line 349, in _predict\n'
        "    result = predict(**payload)\n"
        '  File "/src/predict.py", line 124, in predict\n'
        f"{kind}: {message}\n"
    )


class WallClock:
    """Maps ``time.monotonic()`` readings to ISO 8601 UTC timestamps."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def iso(self, monotonic: float | None) -> str | None:
        if monotonic is None:
            return None
        moment = datetime.fromtimestamp(self._wall0 + (monotonic - self._mono0), tz=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _json_response(
    status: int, data: Any, *, problem: bool = False, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data),
        content_type=PROBLEM_JSON if problem else "application/json",
        headers=dict(headers or {}),
    )


def _parse_prefer_wait(header: str | None) -> float | None:
    """Seconds asked for by ``Prefer: wait`` / ``Prefer: wait=N`` (None when absent)."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return 60.0
        try:
            return float(min(60, max(1, int(value.strip()))))
        except ValueError:
            return None
    return None


class FakeReplicate:
    """An aiohttp server on 127.0.0.1 that behaves like Replicate for meta/musicgen."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        model: str = DEFAULT_MODEL,
        version: str = DEFAULT_VERSION,
        start_seconds: float = 0.05,
        run_seconds: float | None = 0.3,
        sample_rate: int = 32000,
    ) -> None:
        self.token = token
        self.model = model
        self.version = version
        self.start_seconds = start_seconds
        self.run_seconds = run_seconds
        self.sample_rate = sample_rate
        self.default_outcome = Outcome.succeeded()
        # When set, every succeeded prediction's output file holds these bytes instead of a
        # rendered track (a hostile or broken output: an HTML page, a crafted WAV header).
        self.output_data: bytes | None = None

        self.creates: list[CreateRecord] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.cancels: list[str] = []
        self.polls: list[tuple[str, float]] = []
        self.downloads: list[str] = []
        self.requests: list[RequestRecord] = []

        self._create_faults: deque[HttpFault] = deque()
        self._poll_faults: deque[HttpFault] = deque()
        self._cancel_faults: deque[HttpFault] = deque()
        self._download_faults: deque[HttpFault] = deque()
        self._outcomes: deque[Outcome] = deque()
        self._audio: dict[str, bytes] = {}
        self._audio_locks: dict[str, asyncio.Lock] = {}
        self._wall = WallClock()
        self._closing = asyncio.Event()
        self._prediction_added = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, the host root (the client appends ``/v1/...``)."""
        if self._base_url is None:
            raise RuntimeError("FakeReplicate is not started")
        return self._base_url

    async def start(self, port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("FakeReplicate is already started")
        app = web.Application(middlewares=[self._record_request])
        router = app.router
        router.add_post("/v1/predictions", self._handle_create, name="create")
        router.add_get("/v1/predictions/{id}", self._handle_get, name="poll")
        router.add_post("/v1/predictions/{id}/cancel", self._handle_cancel, name="cancel")
        router.add_post(
            "/v1/models/{owner}/{name}/predictions", self._handle_model_create, name="model_create"
        )
        router.add_route("*", "/v1/{tail:.*}", self._handle_unknown)
        router.add_get("/files/{id}/{name}", self._handle_download, name="download")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runner = runner
        host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{host}:{bound_port}"
        logger.info("fake Replicate API listening on %s", self._base_url)
        return self._base_url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open right now (keep-alive ones included)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def wait_connections_closed(self, timeout: float = 2) -> None:
        """Wait until no client connection is open (a closed pool's sockets close soon after)."""
        async with asyncio.timeout(timeout):
            while self.open_connections:  # noqa: ASYNC110 - aiohttp signals no connection close
                await asyncio.sleep(0.01)

    def requests_to(self, route: str) -> list[RequestRecord]:
        """The recorded requests to ``route`` (``create`` covers both create routes)."""
        return [r for r in self.requests if r.route == route]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- knobs --------------------------------------------------------------------------

    def fail_creates(self, *errors: HttpFault) -> None:
        self._create_faults.extend(errors)

    def fail_polls(self, *errors: HttpFault) -> None:
        self._poll_faults.extend(errors)

    def fail_cancels(self, *errors: HttpFault) -> None:
        self._cancel_faults.extend(errors)

    def fail_downloads(self, *errors: HttpFault) -> None:
        self._download_faults.extend(errors)

    def set_outcomes(self, *outcomes: Outcome) -> None:
        self._outcomes.extend(outcomes)

    def finish(self, prediction_id: str) -> None:
        self.predictions[prediction_id].finish()

    def remove_data(self, prediction_id: str) -> None:
        """What Replicate does an hour after an API prediction ends: no input/output/logs."""
        self.predictions[prediction_id].data_removed = True
        self._audio.pop(prediction_id, None)

    async def wait_for_prediction(self, timeout: float = 5) -> FakePrediction:
        """Wait until at least one prediction exists; return the newest."""
        if not self.predictions:
            async with asyncio.timeout(timeout):
                await self._prediction_added.wait()
        return next(reversed(self.predictions.values()))

    # ---- helpers ------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and value.strip() == self.token

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short when the fake closes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    async def _answer_fault(self, request: web.Request, fault: HttpFault) -> web.StreamResponse:
        await self._sleep(fault.delay)
        if fault.drop_connection:
            logger.debug("dropping connection for %s %s", request.method, request.path)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)
        return fault.to_response()

    def _resolve_version(self, ref: Any) -> bool:
        return isinstance(ref, str) and ref in (
            self.version,
            self.model,
            f"{self.model}:{self.version}",
        )

    def _prediction_json(self, prediction: FakePrediction) -> dict[str, Any]:
        return prediction.to_json(self.base_url, self._wall)

    # ---- handlers -----------------------------------------------------------------------

    @web.middleware
    async def _record_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name or "other"
        route = "create" if name == "model_create" else name
        headers = Headers(request.headers.items())
        record = RequestRecord(request.method, request.path, route, headers, time.monotonic())
        self.requests.append(record)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405 for paths outside the API
            record.status = exc.status
            raise
        dropped = request.transport is None or request.transport.is_closing()
        record.status = 0 if dropped else response.status
        return response

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, model_path=None)

    async def _handle_model_create(self, request: web.Request) -> web.StreamResponse:
        owner, name = request.match_info["owner"], request.match_info["name"]
        return await self._create(request, model_path=f"{owner}/{name}")

    async def _create(self, request: web.Request, *, model_path: str | None) -> web.StreamResponse:
        raw = await request.read()
        parsed_ok = True
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parsed_ok = False
        record = CreateRecord(
            body=body,
            headers=Headers(request.headers.items()),
            at=time.monotonic(),
            path=request.path,
        )
        self.creates.append(record)
        fault: HttpFault | None = None
        if not self._authorized(request):
            fault = HttpFault.unauthenticated()
        elif self._create_faults:
            fault = self._create_faults.popleft()
        if fault is not None:
            response = await self._answer_fault(request, fault)
            record.status = 0 if fault.drop_connection else response.status
            return response

        response = await self._create_prediction(request, body, parsed_ok, model_path, record)
        record.status = response.status
        return response

    async def _create_prediction(
        self,
        request: web.Request,
        body: Any,
        parsed_ok: bool,
        model_path: str | None,
        record: CreateRecord,
    ) -> web.Response:
        if not parsed_ok or not isinstance(body, dict):
            return _json_response(400, {"detail": "Invalid JSON body", "status": 400}, problem=True)
        if model_path is not None:
            if model_path != self.model:
                return HttpFault.not_found().to_response()
        elif "version" not in body:
            return _json_response(
                422, {"detail": "version is required", "status": 422}, problem=True
            )
        elif not self._resolve_version(body["version"]):
            return HttpFault.invalid_version().to_response()

        payload = body.get("input")
        problems = validate_musicgen_input(payload)
        if problems:
            return HttpFault.input_invalid(problems).to_response()
        assert isinstance(payload, dict)

        outcome = self._outcomes.popleft() if self._outcomes else self.default_outcome
        rule_error = _model_rule_error(payload)
        if rule_error is not None:
            outcome = Outcome.failed(rule_error)
        requested_seed = payload.get("seed")
        seed = (
            int(requested_seed)
            if isinstance(requested_seed, int | float) and requested_seed > 0
            else random.randrange(0, 2**32 - 1)
        )
        prediction = FakePrediction(
            id=_new_prediction_id(),
            model=self.model,
            version=self.version,
            input=payload,
            outcome=outcome,
            created_at=time.monotonic(),
            start_seconds=self.start_seconds,
            run_seconds=self.run_seconds,
            seed=seed,
            rule_error=rule_error,
        )
        self.predictions[prediction.id] = prediction
        record.prediction_id = prediction.id
        self._prediction_added.set()
        logger.debug("created prediction %s (outcome %s)", prediction.id, outcome.kind)

        wait = _parse_prefer_wait(request.headers.get("Prefer"))
        if wait is not None:
            deadline = time.monotonic() + wait
            while not prediction.terminal and not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await self._sleep(min(0.01, remaining))
        return _json_response(201, self._prediction_json(prediction))

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        prediction_id = request.match_info["id"]
        self.polls.append((prediction_id, time.monotonic()))
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        if self._poll_faults:
            return await self._answer_fault(request, self._poll_faults.popleft())
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return HttpFault.not_found().to_response()
        return _json_response(200, self._prediction_json(prediction))

    async def _handle_cancel(self, request: web.Request) -> web.StreamResponse:
        prediction_id = request.match_info["id"]
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        if self._cancel_faults:
            return await self._answer_fault(request, self._cancel_faults.popleft())
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return HttpFault.not_found().to_response()
        self.cancels.append(prediction_id)
        prediction.cancel()
        return _json_response(200, self._prediction_json(prediction))

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        return HttpFault.not_found().to_response()

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        self.downloads.append(request.path)
        if self._download_faults:
            return await self._answer_fault(request, self._download_faults.popleft())
        prediction_id, name = request.match_info["id"], request.match_info["name"]
        prediction = self.predictions.get(prediction_id)
        if (
            prediction is None
            or prediction.status != "succeeded"
            or prediction.outcome.kind != "succeeded"
            or prediction.data_removed
            or name != prediction.output_name
        ):
            return web.Response(status=404, text="Not Found")
        data = await self._audio_bytes(prediction)
        content_type = "audio/mpeg" if name.endswith(".mp3") else "audio/wav"
        return web.Response(body=data, content_type=content_type)

    async def _audio_bytes(self, prediction: FakePrediction) -> bytes:
        if self.output_data is not None:
            return self.output_data
        lock = self._audio_locks.setdefault(prediction.id, asyncio.Lock())
        async with lock:
            cached = self._audio.get(prediction.id)
            if cached is None:
                cached = await asyncio.to_thread(
                    render_audio,
                    duration=prediction.duration,
                    channels=prediction.channels,
                    sample_rate=self.sample_rate,
                    output_format=str(prediction.input.get("output_format", "wav")),
                    seed=prediction.seed,
                )
                self._audio[prediction.id] = cached
            return cached


# --------------------------------------------------------------------------------------------
# Standalone mode
# --------------------------------------------------------------------------------------------


async def _serve(port: int, token: str, start_seconds: float, run_seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    fake = FakeReplicate(token, start_seconds=start_seconds, run_seconds=run_seconds)
    await fake.start(port)
    try:
        print(f"Fake Replicate API at {fake.base_url} token={fake.token}", flush=True)
        await stop.wait()
    finally:
        await fake.close()
        logger.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.replicate",
        description="Serve a local fake of the Replicate API for meta/musicgen.",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--start-seconds", type=float, default=1.0)
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=5.0,
        help="seconds a prediction spends processing; negative: until cancelled",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_seconds = None if args.run_seconds < 0 else args.run_seconds
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.token, args.start_seconds, run_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
