"""A settable clock for the store and the limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2025, 3, 14, 20, 48, 0, 123456, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
