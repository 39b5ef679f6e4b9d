"""Instants as the SQLite store writes them: UTC ISO text of fixed width, so that SQLite's
string comparison orders them, and back.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_text(dt: datetime) -> str:
    """UTC, fixed width, so that SQLite's string comparison orders instants."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timezone-aware datetime required, got naive {dt.isoformat()}")
    # "YYYY-MM-DDTHH:MM:SS.ffffff+00:00" -> "...ffffffZ"; several times cheaper than
    # strftime("%Y-%m-%dT%H:%M:%S.%fZ"), and the year is zero-padded whatever it is.
    return dt.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def from_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def required_time(value: str) -> datetime:
    """A NOT NULL time column's value."""
    return datetime.fromisoformat(value).astimezone(UTC)
