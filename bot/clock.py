"""The one clock and the one timestamp format: every datetime is timezone-aware UTC.

Stored timestamps are fixed-width ISO-8601 UTC text: readable in the ``sqlite3`` shell, ordered
as plain strings, and cast directly to ``TIMESTAMPTZ`` by Postgres. A naive datetime has no
defined moment, so it is refused rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["TIMESTAMP_FORMAT", "format_timestamp", "parse_timestamp", "utc_now"]

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How every timestamp is stored: ISO-8601 UTC text of fixed width, so strings sort by time."""


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default clock wherever one is injected)."""
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """`moment` (timezone-aware) as stored text; naive datetimes are refused."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Stored text back to a timezone-aware UTC datetime."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
