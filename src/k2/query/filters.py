"""Query arguments validated into a :class:`~k2.query.planner.ScanFilter`: aware times, upper-cased names,
the canonical instrument with the venue symbols of rows stored without one (:mod:`k2.query.instruments`)."""

from __future__ import annotations

from datetime import datetime

from k2.errors import QueryError
from k2.query.instruments import instrument_filter
from k2.query.planner import ScanFilter, to_us

MAX_LIMIT = 1_000_000


def _utc_us(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise QueryError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(f"{name} must be timezone-aware (e.g. tzinfo=UTC); naive datetimes are rejected")
    return to_us(value)


def _name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QueryError(f"{what} must be a non-empty string")
    return value.strip().upper()


def make_filter(
    symbol: str | None = None,
    exchange: str | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    time_column: str = "timestamp",
    instrument: str | None = None,
) -> ScanFilter:
    """Validate query arguments into a :class:`ScanFilter` (symbols/exchanges upper-cased, the
    instrument canonical: ``BASE/QUOTE``, with the venue symbols of rows stored without one)."""
    start_us, end_us = _utc_us(start_time, "start_time"), _utc_us(end_time, "end_time")
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise QueryError("start_time must be before end_time")
    name, legacy = instrument_filter(instrument)
    return ScanFilter(_name(symbol, "symbol"), _name(exchange, "exchange"), start_us, end_us, time_column, name, legacy)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be an integer between 1 and {MAX_LIMIT}")


__all__ = ["MAX_LIMIT", "check_limit", "make_filter"]
