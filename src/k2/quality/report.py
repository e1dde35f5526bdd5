"""The per-symbol, per-day quality report, computed from trade rows and quality-event rows. Pure.

Inputs are Arrow tables (the caller scans the lake); the aggregation runs in an in-memory DuckDB.
Days are UTC days of the exchange trade time (events: of the trade that revealed them). A gap's
state is its newest row (see :mod:`k2.schema.quality_event`).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

REPORT_COLUMNS = (
    "day",
    "exchange",
    "symbol",
    "trades",
    "first_id",
    "last_id",
    "expected",
    "missing",
    "backfilled_trades",
    "gaps_found",
    "gaps_backfilled",
    "gaps_unrecoverable",
    "gaps_open",
    "duplicates_dropped",
    "out_of_order",
    "resets",
    "price_jump",
    "timestamp_future",
    "timestamp_lag",
    "stale_feed",
)

_US_PER_DAY = 86_400_000_000

COUNT_COLUMNS = ("day", "exchange", "symbol", "trades", "first_id", "last_id", "backfilled_trades")
"""The trade half of the report per (day, exchange, symbol): what :func:`build_report_from_counts` takes."""

_COUNTS_SQL = """
SELECT day, exchange, symbol, count(*) AS trades, min(id) AS first_id, max(id) AS last_id,
       count(*) FILTER (WHERE backfilled) AS backfilled_trades
FROM trades GROUP BY ALL
"""

# The current state of each event: its newest row (a final status wins a tie of status_at).
_LATEST = """
    SELECT * FROM events
    QUALIFY row_number() OVER (
        PARTITION BY event_id ORDER BY status_at DESC, (status IN ('RESOLVED', 'UNRECOVERABLE')) DESC
    ) = 1
"""

_SQL = f"""
WITH latest AS ({_LATEST}), e AS (
    SELECT day, exchange, symbol,
        count(*) FILTER (WHERE kind = 'GAP') AS gaps_found,
        count(*) FILTER (WHERE kind = 'GAP' AND status = 'RESOLVED') AS gaps_backfilled,
        count(*) FILTER (WHERE kind = 'GAP' AND status = 'UNRECOVERABLE') AS gaps_unrecoverable,
        count(*) FILTER (WHERE kind = 'GAP' AND status = 'OPEN') AS gaps_open,
        CAST(coalesce(sum("count") FILTER (WHERE kind = \'DUPLICATE\'), 0) AS BIGINT) AS duplicates_dropped,
        CAST(coalesce(sum("count") FILTER (WHERE kind = \'OUT_OF_ORDER\'), 0) AS BIGINT) AS out_of_order,
        count(*) FILTER (WHERE kind = 'RESET') AS resets,
        CAST(coalesce(sum("count") FILTER (WHERE kind = \'PRICE_JUMP\'), 0) AS BIGINT) AS price_jump,
        CAST(coalesce(sum("count") FILTER (WHERE kind = \'TIMESTAMP_FUTURE\'), 0) AS BIGINT) AS timestamp_future,
        CAST(coalesce(sum("count") FILTER (WHERE kind = \'TIMESTAMP_LAG\'), 0) AS BIGINT) AS timestamp_lag,
        count(*) FILTER (WHERE kind = 'STALE_FEED') AS stale_feed
    FROM latest GROUP BY ALL
)
SELECT coalesce(t.day, e.day) AS day, coalesce(t.exchange, e.exchange) AS exchange,
       coalesce(t.symbol, e.symbol) AS symbol,
       coalesce(t.trades, 0) AS trades, t.first_id, t.last_id,
       coalesce(t.last_id - t.first_id + 1, 0) AS expected,
       coalesce(t.last_id - t.first_id + 1 - t.trades, 0) AS missing,
       coalesce(t.backfilled_trades, 0) AS backfilled_trades,
       coalesce(gaps_found, 0) AS gaps_found, coalesce(gaps_backfilled, 0) AS gaps_backfilled,
       coalesce(gaps_unrecoverable, 0) AS gaps_unrecoverable, coalesce(gaps_open, 0) AS gaps_open,
       coalesce(duplicates_dropped, 0) AS duplicates_dropped, coalesce(out_of_order, 0) AS out_of_order,
       coalesce(resets, 0) AS resets, coalesce(price_jump, 0) AS price_jump,
       coalesce(timestamp_future, 0) AS timestamp_future, coalesce(timestamp_lag, 0) AS timestamp_lag,
       coalesce(stale_feed, 0) AS stale_feed
FROM t FULL OUTER JOIN e ON t.day = e.day AND t.exchange = e.exchange AND t.symbol = e.symbol
ORDER BY day, exchange, symbol
"""  # noqa: S608 - constant fragments only

GAP_COLUMNS = (
    "day", "exchange", "symbol", "event_id", "first_id", "last_id", "count", "status", "recovered",
    "trade_time", "detected_at", "status_at", "detail",
)  # fmt: skip

_GAPS_SQL = f"""
SELECT day, exchange, symbol, event_id, first_id, last_id, "count", status, recovered,
       trade_time, detected_at, status_at, detail
FROM ({_LATEST}) WHERE kind = 'GAP' ORDER BY day, exchange, symbol, first_id, detected_at
"""  # noqa: S608 - constant fragments only


def _utc_day(ts: pa.ChunkedArray | pa.Array) -> pa.Array:
    days = pc.divide(pc.cast(ts, pa.int64()), _US_PER_DAY)  # integer division: floor for >= 1970
    return pc.cast(pc.cast(days, pa.int32()), pa.date32())


def build_report(trades: pa.Table, events: pa.Table) -> pa.Table:
    """``trades``: exchange, symbol, timestamp, source_sequence, vendor_data; ``events``: the
    quality-event table's rows. Returns one row per (day, exchange, symbol), :data:`REPORT_COLUMNS`."""
    vendor = trades["vendor_data"]
    backfilled_value = pc.map_lookup(vendor, pa.scalar("backfilled", vendor.type.key_type), "first")
    backfilled = pc.fill_null(pc.equal(backfilled_value, "true"), False)
    t = pa.table(
        {
            "day": _utc_day(trades["timestamp"]),
            "exchange": trades["exchange"],
            "symbol": trades["symbol"],
            "id": trades["source_sequence"],
            "backfilled": backfilled,
        }
    )
    return build_report_from_counts(_run({"trades": t}, _COUNTS_SQL), events)


def build_report_from_counts(counts: pa.Table, events: pa.Table) -> pa.Table:
    """The report from per-(day, exchange, symbol) trade counts (:data:`COUNT_COLUMNS`, e.g. aggregated
    by the query engine over the lake's files) and the quality-event rows."""
    e = events.append_column("day", _utc_day(events["trade_time"]))
    return _run({"t": counts.select(list(COUNT_COLUMNS)), "events": e}, _SQL).select(list(REPORT_COLUMNS))


def gap_states(events: pa.Table) -> pa.Table:
    """Every gap in its current state (its newest row), :data:`GAP_COLUMNS`, with ``day`` the UTC
    day of the trade that revealed it; ordered by day, exchange, symbol, first id."""
    e = events.append_column("day", _utc_day(events["trade_time"]))
    return _run({"events": e}, _GAPS_SQL).select(list(GAP_COLUMNS))


def _run(tables: dict[str, pa.Table], text: str) -> pa.Table:
    con = duckdb.connect(":memory:")
    try:
        for name, table in tables.items():
            con.register(name, table)
        result: pa.Table = con.sql(text).to_arrow_table()
    finally:
        con.close()
    return result
