"""OHLCV bars: the interval syntax, the bars' schema, bucket parameters from plan metrics, and the exact
bar table from DuckDB's sums. Pure (no DuckDB, no I/O): :class:`k2.query.engine.QueryEngine` runs the SQL
(:func:`k2.query.sql.aggregate_sql`)."""

from __future__ import annotations

import re
from datetime import timedelta

import pyarrow as pa

from k2.errors import QueryError
from k2.query import exact, sql
from k2.query.planner import ScanPlan
from k2.schema import PRICE_PRECISION, PRICE_SCALE

_INTERVAL = re.compile(r"\s*(\d+)\s*(ms|s|m|h|d)\s*")
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
MAX_INTERVAL = timedelta(days=366)

_PRICE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_UTC_US = pa.timestamp("us", tz="UTC")
OHLCV_SCHEMA = pa.schema(
    [
        pa.field("bucket", _UTC_US, False),
        pa.field("open", _PRICE, False),
        pa.field("high", _PRICE, False),
        pa.field("low", _PRICE, False),
        pa.field("close", _PRICE, False),
        pa.field("volume", _PRICE, False),
        pa.field("trades", pa.int64(), False),
        pa.field("vwap", _PRICE, True),  # null only when the bar's volume is zero
    ]
)


VENUE_OHLCV_SCHEMA = pa.schema([pa.field("exchange", pa.string(), False), *OHLCV_SCHEMA])
"""Bars of one instrument per venue, side by side: one row per bar per exchange, by bucket then exchange."""


def parse_interval(text: str) -> timedelta:
    """A bar width such as ``250ms``, ``1s``, ``5m``, ``1h``, ``1d`` (1 ms up to 366 days)."""
    match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise QueryError(f"invalid interval {text!r}: use <number><unit>, unit one of ms, s, m, h, d")
    width = timedelta(microseconds=int(match[1]) * _UNIT_US[match[2]])
    if not timedelta(0) < width <= MAX_INTERVAL:
        raise QueryError(f"invalid interval {text!r}: must be between 1ms and 366d")
    return width


def bar_parameters(plan: ScanPlan, width_us: int) -> tuple[dict[str, int], bool]:
    """Bucket and order-key parameters for :func:`k2.query.sql.aggregate_sql`, from plan metrics.

    ``origin`` is a multiple of the width at or before every planned timestamp (so DuckDB's
    truncating division floors). The order key is the compact BIGINT form when (largest offset of
    a trade in its bucket) x (sequence span) provably fits 63 bits, else the HUGEINT form (False).
    """
    if plan.min_timestamp_us is not None:
        origin = plan.min_timestamp_us // width_us * width_us
    else:  # no metrics: an origin before any realistic timestamp (overflow raises, never wraps)
        origin = -((1 << 62) // width_us + 1) * width_us
    params = {"width": width_us, "origin": origin}
    t1, s0, s1 = plan.max_timestamp_us, plan.min_sequence, plan.max_sequence
    if t1 is None or s0 is None or s1 is None:
        return params, False
    offsets = min(width_us, t1 - origin + 1)  # (timestamp - bucket start) is below this
    span = s1 - s0 + 1
    if offsets * span >= 1 << 63:
        return params, False
    params.update(key_m=span, key_s0=s0)
    return params, True


def ohlcv_table(raw: pa.Table, method: exact.NotionalMethod, *, by_exchange: bool = False) -> pa.Table:
    """:data:`OHLCV_SCHEMA` rows (:data:`VENUE_OHLCV_SCHEMA` ``by_exchange``) from the aggregate's sums."""
    schema = VENUE_OHLCV_SCHEMA if by_exchange else OHLCV_SCHEMA
    if raw.num_rows == 0:
        return schema.empty_table()
    notional, volume = sql.aggregate_sums(raw, method)
    vwap = [exact.vwap_unscaled(n, v) for n, v in zip(notional, volume, strict=True)]
    columns = {
        "exchange": raw.column("exchange") if by_exchange else None,
        "bucket": raw.column("bucket_us").cast(_UTC_US),
        "open": raw.column("open"),
        "high": raw.column("high"),
        "low": raw.column("low"),
        "close": raw.column("close"),
        "volume": exact.decimal_array(volume, "volume"),
        "trades": raw.column("trades"),
        "vwap": exact.decimal_array(vwap, "vwap"),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)
