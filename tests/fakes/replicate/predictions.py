"""A fake prediction: its status follows the clock, its logs and JSON look like Replicate's."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Final

from tests.fakes.replicate.faults import Outcome, Status
from tests.fakes.replicate.schema import MODEL_VERSIONS

TOKENS_PER_SECOND: Final = 50  # MusicGen generates 50 EnCodec frames per second of audio
TERMINAL_STATUSES: Final = frozenset({"succeeded", "failed", "canceled", "aborted"})


def new_prediction_id() -> str:
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
