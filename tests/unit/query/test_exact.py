"""Exact notional, volume and VWAP: the helpers, every summing method, and extreme decimal values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.errors import QueryError
from k2.lake.catalog import load_or_create_table
from k2.query import QueryEngine, exact, sql
from k2.query.bars import bar_parameters
from k2.query.exact import LIMBS, NotionalMethod
from k2.query.planner import ScanFilter, ScanPlan
from k2.schema.kinds import RecordKind
from tests.unit.query import reference as ref

# Decimal arithmetic rounds to 28 digits by default: every 38-digit value here is written out.
MAX = Decimal("99999999999999999999999999.999999999999")  # the largest decimal(38, 12)
MAX_MINUS_TINY = Decimal("99999999999999999999999999.999999999998")
NEG_MAX = Decimal("-99999999999999999999999999.999999999999")
TINY = Decimal("0.000000000001")
DEC = pa.decimal128(38, 12)


def test_div_round_half_even() -> None:
    assert exact.div_round_half_even(7, 2) == 4  # 3.5 -> 4
    assert exact.div_round_half_even(5, 2) == 2  # 2.5 -> 2
    assert exact.div_round_half_even(-5, 2) == -2
    assert exact.div_round_half_even(-7, 2) == -4
    assert exact.div_round_half_even(10, 3) == 3
    assert exact.div_round_half_even(11, 3) == 4
    assert exact.div_round_half_even(5, -2) == -2
    big = 10**75 + 1
    assert exact.div_round_half_even(big, 10**37) == 10**38
    with pytest.raises(ZeroDivisionError):
        exact.div_round_half_even(1, 0)


def test_vwap_unscaled_units() -> None:
    # 2 trades: 1.5 @ 100 and 0.5 @ 200 -> notional 250, volume 2, vwap 125
    notional = (100 * 10**12) * (15 * 10**11) + (200 * 10**12) * (5 * 10**11)
    assert exact.vwap_unscaled(notional, 2 * 10**12) == 125 * 10**12
    assert exact.vwap_unscaled(0, 0) is None


def test_decimal_round_trip_at_full_precision() -> None:
    for value in (MAX, NEG_MAX, MAX_MINUS_TINY, TINY, Decimal("61837.63"), Decimal(0)):
        u = exact.unscaled(value)
        assert exact.to_decimal(u) == value
    assert exact.unscaled(MAX) == 10**38 - 1
    with pytest.raises(QueryError, match="decimal places"):
        exact.unscaled(Decimal("0.0000000000001"))


def test_unscaled_ints_reads_sliced_arrays_with_nulls() -> None:
    array = pa.array([MAX, None, NEG_MAX, TINY, Decimal("1.5")], DEC).slice(1)
    assert exact.unscaled_ints(array) == [None, -(10**38 - 1), 1, 15 * 10**11]


def test_decimal_array_refuses_values_that_do_not_fit() -> None:
    assert exact.decimal_array([10**38 - 1, None], "x").to_pylist() == [MAX, None]
    with pytest.raises(QueryError, match="volume"):
        exact.decimal_array([10**38], "volume")


def test_combine_limbs() -> None:
    value = 12345678901234567890123456789012345678 * 10**30 + 987
    limbs = [(value >> (42 * i)) & exact.LIMB_MASK for i in range(4)] + [value >> 168]
    assert exact.combine_limbs(limbs) == value


@pytest.mark.parametrize(
    ("price", "quantity", "files", "max_rows", "expected"),
    [
        (6 * 10**16, 5 * 10**13, 10, 1_000_000, NotionalMethod("chunked", None)),
        (10**25, 10**12, 1, 100, NotionalMethod("chunked", 9)),
        (10**25, 10**12, 3, 100, NotionalMethod("chunked", 3)),
        (10**38 - 1, 10**12, 1, 1, LIMBS),
        (1, 10**38 - 1, 1, 1, NotionalMethod("chunked", None)),  # tiny price x huge quantity, one row
        (1, 10**38 - 1, 2, 2, LIMBS),
        (None, 10**12, 1, 1, LIMBS),  # no metrics: always safe
    ],
)
def test_choose_method(
    price: int | None, quantity: int | None, files: int, max_rows: int, expected: NotionalMethod
) -> None:
    assert exact.choose_method(price, quantity, files, max_rows) == expected


@pytest.mark.parametrize("compact_key", [True, False], ids=["bigint-key", "hugeint-key"])
@pytest.mark.parametrize("method", [NotionalMethod("chunked", None), NotionalMethod("chunked", 997), LIMBS], ids=str)
def test_every_method_gives_the_same_exact_bars_on_the_recording(
    engine: QueryEngine, recording: pa.Table, method: NotionalMethod, compact_key: bool
) -> None:
    """Every summing method and both order keys, forced on the real recording (1-minute BTCUSDT bars)."""
    plan = engine.plan("BTCUSDT")
    where, params = plan.filter.sql_where()  # the explicit WHERE, even though the plan implies it
    bar_params, _ = bar_parameters(plan, 60_000_000)
    bar_params = {k: v for k, v in bar_params.items() if not k.startswith("key_")}
    if compact_key:  # recording-sized spans always fit a BIGINT key
        assert plan.min_timestamp_us is not None and plan.min_sequence is not None
        assert plan.max_sequence is not None
        bar_params.update(key_m=plan.max_sequence - plan.min_sequence + 1, key_s0=plan.min_sequence)
    params.update(files=list(plan.files), **bar_params)
    if method.needs_row_numbers:
        params["chunk_rows"] = method.chunk_rows
    con = sql.open_connection(str(engine.plan().files[0]).rsplit("/data/", 1)[0] + "/")
    try:
        text = sql.aggregate_sql(where, method, bucketed=True, compact_key=compact_key)
        raw = sql.run(con, text, params)
    finally:
        con.close()
    notional, volume = sql.aggregate_sums(raw, method)
    btc = ref.rows(recording, "BTCUSDT")
    bars = ref.ohlcv(btc, timedelta(minutes=1))
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for r in btc:
        t = ref.us(r["timestamp"])
        by_bucket.setdefault(t - t % 60_000_000, []).append(r)
    expected_notional = [
        sum(exact.unscaled(r["price"]) * exact.unscaled(r["quantity"]) for r in by_bucket[b]) for b in sorted(by_bucket)
    ]
    assert raw.column("bucket_us").to_pylist() == sorted(by_bucket)
    assert notional == expected_notional
    assert volume == [exact.unscaled(b["volume"]) for b in bars]
    for name in ("open", "high", "low", "close", "trades"):
        assert raw.column(name).to_pylist() == [b[name] for b in bars], name


def test_bar_parameters() -> None:
    base = ScanPlan(1, ScanFilter(), ("f",), 1, 1, 1, 1, 1, None, None, None, None, (), frozenset())
    # No metrics: an origin far before any timestamp, and the HUGEINT key.
    params, compact = bar_parameters(base, 60_000_000)
    assert not compact
    assert params["origin"] % 60_000_000 == 0
    assert params["origin"] < -(1 << 62)
    day = 1_723_161_600_000_000  # 2024-08-09 00:00 UTC
    two_days = replace(base, min_timestamp_us=day + 5, max_timestamp_us=day + 2 * 86_400_000_000 - 1)
    # Binance ids of BTCUSDT and ETHUSDT in one file span ~2.2e9: fine for minute bars...
    mixed = replace(two_days, min_sequence=1_520_545_023, max_sequence=3_738_333_602)
    params, compact = bar_parameters(mixed, 60_000_000)
    assert compact
    assert params == {"width": 60_000_000, "origin": day, "key_m": 2_217_788_580, "key_s0": 1_520_545_023}
    # ... and hourly ones (3.6e9 x 2.2e9 < 2**63), not daily ones (8.64e10 x 2.2e9 > 2**63).
    assert bar_parameters(mixed, 3_600_000_000)[1]
    params, compact = bar_parameters(mixed, 86_400_000_000)
    assert not compact
    assert params == {"width": 86_400_000_000, "origin": day}
    # A short time range bounds the offsets too: one hour of data takes daily bars with the BIGINT key.
    short = replace(mixed, max_timestamp_us=day + 3_600_000_000)
    assert bar_parameters(short, 86_400_000_000)[1]
    # Timestamps before 1970 still floor to the bucket below.
    params, _ = bar_parameters(replace(base, min_timestamp_us=-1, max_timestamp_us=5), 60_000_000)
    assert params["origin"] == -60_000_000


def _with_values(template: pa.Table, prices: list[Decimal], quantities: list[Decimal]) -> pa.Table:
    """``len(prices)`` real BTCUSDT trades with their price and quantity replaced."""
    btc = template.filter(pc.equal(template.column("symbol"), "BTCUSDT")).slice(0, len(prices))
    btc = btc.set_column(btc.schema.get_field_index("price"), btc.schema.field("price"), pa.array(prices, DEC))
    return btc.set_column(
        btc.schema.get_field_index("quantity"), btc.schema.field("quantity"), pa.array(quantities, DEC)
    )


@pytest.fixture
def extreme_engine(
    empty_lake: tuple[Catalog, LakeSettings],
) -> Iterator[tuple[QueryEngine, Catalog, LakeSettings]]:
    catalog, lake = empty_lake
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    with QueryEngine(catalog, lake, refresh_interval_s=0.0) as eng:
        yield eng, catalog, lake


def _load(extreme: tuple[QueryEngine, Catalog, LakeSettings], data: pa.Table) -> QueryEngine:
    engine, catalog, lake = extreme
    load_or_create_table(catalog, lake, RecordKind.TRADES).append(data)
    return engine


def _method(engine: QueryEngine) -> NotionalMethod:
    plan = engine.plan("BTCUSDT")
    return exact.choose_method(plan.max_abs_price, plan.max_abs_quantity, len(plan.files), plan.max_file_rows)


def test_huge_quantities_at_tiny_prices(
    extreme_engine: tuple[QueryEngine, Catalog, LakeSettings], recording: pa.Table
) -> None:
    prices = [TINY, 2 * TINY, 3 * TINY, Decimal("0.000000000007")]
    quantities = [MAX, MAX_MINUS_TINY, Decimal("12345678901234567890.123456789012"), Decimal("0.5")]
    engine = _load(extreme_engine, _with_values(recording, prices, quantities))
    assert _method(engine) == LIMBS
    rows = ref.rows(engine.query_trades("BTCUSDT").table)
    assert engine.vwap("BTCUSDT") == ref.vwap(rows)
    notional = sum((Fraction(p) * Fraction(q) for p, q in zip(prices, quantities, strict=True)), Fraction(0))
    volume = sum((Fraction(q) for q in quantities), Fraction(0))
    assert engine.vwap("BTCUSDT") == ref.round_12(notional / volume)
    # The total volume (~2e26) cannot be a decimal(38, 12) bar volume: refused, not rounded.
    with pytest.raises(QueryError, match="volume"):
        engine.ohlcv("BTCUSDT", "1d")


def test_the_largest_prices(extreme_engine: tuple[QueryEngine, Catalog, LakeSettings], recording: pa.Table) -> None:
    prices = [MAX, MAX_MINUS_TINY, MAX, Decimal("12345678901234567890123456.5")]
    quantities = [Decimal(1), TINY, Decimal("2.5"), Decimal("3.000000000001")]
    engine = _load(extreme_engine, _with_values(recording, prices, quantities))
    assert _method(engine) == LIMBS
    rows = ref.rows(engine.query_trades("BTCUSDT").table)
    assert engine.vwap("BTCUSDT") == ref.vwap(rows)
    bars = engine.ohlcv("BTCUSDT", "1d").to_pylist()
    assert bars == ref.ohlcv(rows, timedelta(days=1))
    assert bars[0]["high"] == MAX
    assert bars[0]["volume"] == Decimal("6.500000000002")


def test_sums_that_would_overflow_are_chunked(
    extreme_engine: tuple[QueryEngine, Catalog, LakeSettings], recording: pa.Table
) -> None:
    """100 trades of ~1e37 unscaled notional each: the total (1e39) overflows DECIMAL(38) and HUGEINT,
    so they are summed in chunks of at most 9 rows and added up in Python."""
    prices = [Decimal(10**13) + i * Decimal("0.000000001") for i in range(100)]
    quantities = [Decimal(1) + Decimal(i) / 1000 for i in range(100)]
    engine = _load(extreme_engine, _with_values(recording, prices, quantities))
    method = _method(engine)
    assert method.kind == "chunked"
    assert method.chunk_rows == 9
    rows = ref.rows(engine.query_trades("BTCUSDT").table)
    assert engine.vwap("BTCUSDT") == ref.vwap(rows)
    assert engine.ohlcv("BTCUSDT", "1m").to_pylist() == ref.ohlcv(rows, timedelta(minutes=1))
    assert engine.ohlcv("BTCUSDT", "1d").to_pylist() == ref.ohlcv(rows, timedelta(days=1))
