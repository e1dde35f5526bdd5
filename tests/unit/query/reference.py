"""Pure-Python reference computations (Decimal and Fraction, no DuckDB) to check the engine against."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from fractions import Fraction
from typing import Any

import pyarrow as pa

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUANTUM = Fraction(1, 10**12)
EXACT = Context(prec=100)  # the default context would round 38-digit values to 28 digits


def us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


_ROWS: dict[int, tuple[pa.Table, list[dict[str, Any]]]] = {}


def rows(table: pa.Table, symbol: str | None = None) -> list[dict[str, Any]]:
    """The table's rows as dicts (converted once per table: the recording is shared by many tests)."""
    cached = _ROWS.get(id(table))
    if cached is None or cached[0] is not table:
        cached = _ROWS[id(table)] = (table, table.to_pylist())
    return [r for r in cached[1] if symbol is None or r["symbol"] == symbol]


def order_key(row: dict[str, Any]) -> tuple[datetime, int]:
    return (row["timestamp"], row["source_sequence"])


def round_12(value: Fraction) -> Decimal:
    """Round to 12 decimal places, ties to even (Fraction.__round__ is banker's rounding)."""
    scaled = round(value / QUANTUM)  # int, half-even
    return Decimal(scaled).scaleb(-12, context=EXACT)


def vwap(trades: list[dict[str, Any]]) -> Decimal | None:
    notional = sum((Fraction(r["price"]) * Fraction(r["quantity"]) for r in trades), Fraction(0))
    volume = sum((Fraction(r["quantity"]) for r in trades), Fraction(0))
    return None if volume == 0 else round_12(notional / volume)


def ohlcv(trades: list[dict[str, Any]], width: timedelta) -> list[dict[str, Any]]:
    """Bars computed row by row: epoch-aligned buckets, open/close by (timestamp, source_sequence)."""
    width_us = width // timedelta(microseconds=1)
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in trades:
        t = us(r["timestamp"])
        buckets[t - t % width_us].append(r)
    bars = []
    for start in sorted(buckets):
        group = sorted(buckets[start], key=order_key)
        volume = round_12(sum((Fraction(r["quantity"]) for r in group), Fraction(0)))
        bars.append(
            {
                "bucket": EPOCH + timedelta(microseconds=start),
                "open": group[0]["price"],
                "high": max(r["price"] for r in group),
                "low": min(r["price"] for r in group),
                "close": group[-1]["price"],
                "volume": volume,
                "trades": len(group),
                "vwap": vwap(group),
            }
        )
    return bars
