"""The API's own reads beyond the engine's: instruments, feed freshness, best bid/offer per bucket and
the completeness report.

Each function runs in a worker thread with the worker's cursor (interruptible like every API query)
and reads the planned Parquet files with bound parameters; the quality-event table is small and read
with pyiceberg. Nothing here writes: a missing event table reads as no events.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan

from k2.api.params import Selection
from k2.api.series import plan_of
from k2.api.workers import Worker
from k2.config import K2Settings
from k2.lake.catalog import table_identifier
from k2.quality.records import QUALITY_EVENT_ARROW_SCHEMA
from k2.quality.report import COUNT_COLUMNS, build_report_from_counts, gap_states
from k2.query.bars import bar_parameters
from k2.query.planner import ScanFilter
from k2.query.quotes import BBO_SCHEMA, bbo_sql, bbo_table
from k2.query.sql import TRADES_SOURCE, parquet_source
from k2.schema import to_arrow
from k2.schema.kinds import RecordKind, spec

_INSTRUMENTS_SQL = (
    'SELECT exchange, symbol, count(*) AS trades, min("timestamp") AS first_trade, max("timestamp") AS last_trade '  # noqa: S608
    f"FROM {TRADES_SOURCE} GROUP BY ALL ORDER BY exchange, symbol"
)
_FEED_EVENT = {RecordKind.TRADES: '"timestamp"', RecordKind.QUOTES: 'coalesce("timestamp", ingestion_timestamp)'}


def _feeds_sql(kind: RecordKind) -> str:
    """Per feed of ``kind``: newest event, newest ingestion, records ingested since $since (files read by
    field id)."""
    return (
        f"SELECT exchange, symbol, max({_FEED_EVENT[kind]}) AS last_event, "  # noqa: S608 - code constants
        "max(ingestion_timestamp) AS last_ingested, "
        "count(*) FILTER (WHERE ingestion_timestamp >= $since) AS records_last_minute "
        f"FROM {parquet_source(to_arrow(spec(kind).record))} GROUP BY ALL ORDER BY exchange, symbol"
    )


# The trade half of the quality report (k2.quality.report.COUNT_COLUMNS), aggregated by DuckDB over
# the planned files instead of materialising the trades.
def _counts_sql(where: str) -> str:
    return (
        'SELECT CAST("timestamp" AS DATE) AS day, exchange, symbol, count(*) AS trades, '  # noqa: S608
        "min(source_sequence) AS first_id, max(source_sequence) AS last_id, "
        "count(*) FILTER (WHERE vendor_data['backfilled'] = 'true') AS backfilled_trades "
        f"FROM {TRADES_SOURCE} WHERE {where} GROUP BY ALL"
    )


def _pairs_sql(where: str) -> str:
    return f"SELECT DISTINCT exchange, symbol FROM {TRADES_SOURCE} WHERE {where}"  # noqa: S608


def instruments(worker: Worker) -> pa.Table:
    plan = worker.engine.plan()
    if not plan.files:
        return pa.table({"exchange": [], "symbol": [], "trades": [], "first_trade": [], "last_trade": []})
    table: pa.Table = worker.con.sql(_INSTRUMENTS_SQL, params={"files": list(plan.files)}).to_arrow_table()
    return table


def feeds(worker: Worker, now: datetime) -> list[dict[str, Any]]:
    """Freshness and rate of every (exchange, symbol) feed of each market-data table, trades first."""
    rows: list[dict[str, Any]] = []
    for kind in _FEED_EVENT:
        planner = worker.engine.planner(kind)
        plan = None if planner is None else planner.plan(ScanFilter(time_column=spec(kind).time_column))
        if plan is None or not plan.files:
            continue
        params = {"files": list(plan.files), "since": now - timedelta(seconds=60)}
        found = worker.con.sql(_feeds_sql(kind), params=params).to_arrow_table().to_pylist()
        for row in found:
            ingested = row["last_ingested"]
            row["kind"] = kind.value
            row["freshness_s"] = None if ingested is None else round((now - ingested).total_seconds(), 3)
            row["records_per_s"] = round(row["records_last_minute"] / 60.0, 3)
        rows.extend(found)
    return rows


def _day_range(day: date | None) -> tuple[datetime | None, datetime | None]:
    if day is None:
        return None, None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        return start, start + timedelta(days=1)
    except OverflowError:  # 9999-12-31
        return start, datetime.max.replace(tzinfo=UTC)


def _pred(kind: Any, column: str, value: object) -> BooleanExpression:
    return cast(BooleanExpression, kind(column, value))  # pyiceberg predicates take (term, literal)


def _events(
    worker: Worker, settings: K2Settings, symbol: str | None, day: date | None, venues: set[str] | None = None
) -> pa.Table:
    """Quality-event rows of the symbol/day (by the revealing trade's time); empty without a table.
    ``venues``: only these ``EXCHANGE:SYMBOL`` (an instrument's venue symbols)."""
    try:
        table = worker.catalog.load_table(table_identifier(settings.lake, RecordKind.QUALITY_EVENTS))
    except NoSuchTableError:
        return QUALITY_EVENT_ARROW_SCHEMA.empty_table()
    expr: BooleanExpression = AlwaysTrue()
    if symbol:
        expr = And(expr, _pred(EqualTo, "symbol", symbol))
    start, end = _day_range(day)
    if start is not None and end is not None:
        expr = And(expr, _pred(GreaterThanOrEqual, "trade_time", start.isoformat()))
        expr = And(expr, _pred(LessThan, "trade_time", end.isoformat()))
    result: pa.Table = table.scan(row_filter=expr).to_arrow()
    if venues is not None:
        keys = pc.binary_join_element_wise(
            result["exchange"].cast(pa.string()), result["symbol"].cast(pa.string()), ":"
        )
        result = result.filter(pc.is_in(keys, value_set=pa.array(sorted(venues), pa.string())))
    return result


def _venue_symbols(
    worker: Worker, instrument: str | None, start: datetime | None, end: datetime | None
) -> set[str] | None:
    """``EXCHANGE:SYMBOL`` of the trades of ``instrument`` in the range (None: no instrument asked)."""
    if instrument is None:
        return None
    plan = worker.engine.plan(None, None, start, end, instrument=instrument)
    if not plan.files:
        return set()
    where, params = plan.sql_where()
    params["files"] = list(plan.files)
    rows = worker.con.sql(_pairs_sql(where), params=params).fetchall()
    return {f"{exchange}:{symbol}" for exchange, symbol in rows}


def quality(
    worker: Worker, settings: K2Settings, symbol: str | None, day: date | None, instrument: str | None = None
) -> pa.Table:
    """One row per (day, exchange, symbol): expected vs stored, gaps by status, duplicates, anomalies;
    ``instrument``: every venue's symbol of it."""
    start, end = _day_range(day)
    plan = worker.engine.plan(symbol, None, start, end, instrument=instrument)
    if plan.files:
        where, params = plan.sql_where()
        params["files"] = list(plan.files)
        counts = worker.con.sql(_counts_sql(where), params=params).to_arrow_table()
    else:
        counts = pa.table(
            {name: pa.array([], pa.date32() if name == "day" else pa.string()) for name in COUNT_COLUMNS[:3]}
            | {name: pa.array([], pa.int64()) for name in COUNT_COLUMNS[3:]}
        )
    venues = _venue_symbols(worker, instrument, start, end)
    return build_report_from_counts(counts, _events(worker, settings, symbol, day, venues))


def gaps(
    worker: Worker,
    settings: K2Settings,
    symbol: str | None,
    day: date | None,
    status: str | None,
    instrument: str | None = None,
) -> pa.Table:
    """Every gap of the symbol/day (or of the instrument's venue symbols) in its current state
    (optionally only one status)."""
    start, end = _day_range(day)
    table = gap_states(_events(worker, settings, symbol, day, _venue_symbols(worker, instrument, start, end)))
    if status is not None:
        table = table.filter(pc.equal(table["status"], status))
    return table


def bbo(worker: Worker, sel: Selection, width_us: int) -> pa.Table:
    """Best bid and offer per bucket of ``width_us`` (:data:`k2.query.quotes.BBO_SCHEMA`)."""
    plan = plan_of(worker, RecordKind.QUOTES, sel)
    if plan is None or not plan.files:
        return BBO_SCHEMA.empty_table()
    where, params = plan.sql_where()
    origin = bar_parameters(plan, width_us)[0]["origin"]
    params.update(files=list(plan.files), width=width_us, origin=origin)
    return bbo_table(worker.con.sql(bbo_sql(where), params=params).to_arrow_table())
