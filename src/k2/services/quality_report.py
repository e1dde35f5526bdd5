"""``k2 quality``: the completeness/quality report read from the lake (see :mod:`k2.quality.report`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan

from k2.config import K2Settings
from k2.errors import ConfigError, LakeError
from k2.lake.catalog import load_existing_table, open_catalog
from k2.quality.report import build_report
from k2.schema import to_arrow
from k2.schema.quality_event import QUALITY_EVENT


def parse_day(text: str | None) -> date | None:
    """``YYYY-MM-DD`` (a UTC day) or None."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"not a day (YYYY-MM-DD): {text!r}") from exc


def _pred(kind: Any, column: str, value: object) -> BooleanExpression:
    return cast(BooleanExpression, kind(column, value))  # pyiceberg predicates take (term, literal)


def _filter(time_column: str, symbol: str | None, day: date | None, exchange: str | None = None) -> BooleanExpression:
    expr: BooleanExpression = AlwaysTrue()
    if symbol:
        expr = And(expr, _pred(EqualTo, "symbol", symbol.upper()))
    if exchange:
        expr = And(expr, _pred(EqualTo, "exchange", exchange.upper()))
    if day:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        expr = And(expr, _pred(GreaterThanOrEqual, time_column, start.isoformat()))
        expr = And(expr, _pred(LessThan, time_column, (start + timedelta(days=1)).isoformat()))
    return expr


def quality_report(
    settings: K2Settings, *, symbol: str | None = None, day: date | None = None, exchange: str | None = None
) -> pa.Table:
    """One row per (UTC day, exchange, symbol): trades, first/last id, expected vs stored, gaps
    found/backfilled/unrecoverable/open, duplicates dropped, out-of-order, resets, anomalies by kind.
    Completeness is per venue (``exchange``), symbol and stream: several venues give rows of their own."""
    lake = settings.lake
    catalog = open_catalog(lake, create=False)  # a report creates nothing: no table there is an error
    trades = load_existing_table(catalog, lake, lake.trades_table).scan(
        row_filter=_filter("timestamp", symbol, day, exchange),
        selected_fields=("exchange", "symbol", "timestamp", "source_sequence", "vendor_data"),
    )
    try:
        events = load_existing_table(catalog, lake, lake.events_table)
    except LakeError:  # trades written before the quality-events table existed: no event recorded
        no_events = to_arrow(QUALITY_EVENT).empty_table()
        return build_report(trades.to_arrow(), no_events)
    events_filter = _filter("trade_time", symbol, day, exchange)
    return build_report(trades.to_arrow(), events.scan(row_filter=events_filter).to_arrow())


def quality_report_dicts(settings: K2Settings, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`quality_report` as a list of dicts."""
    rows: list[dict[str, Any]] = quality_report(settings, **kwargs).to_pylist()
    return rows
