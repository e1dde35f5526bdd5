"""QueryEngine against the bundled real recording: every method, exact values vs a Python reference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import K2Settings, LakeSettings
from k2.errors import LakeError, QueryError
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.metrics import REGISTRY
from k2.query import OHLCV_SCHEMA, QueryEngine, QueryResult, parse_interval
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind
from tests.unit.query import reference as ref

T0 = datetime(2024, 8, 8, 23, 54, tzinfo=UTC)  # the recording spans 23:54:15 .. 00:05:06 (next day)


def test_query_trades_returns_the_first_rows_in_time_order(any_engine: QueryEngine, recording: pa.Table) -> None:
    result = any_engine.query_trades("BTCUSDT", limit=50)
    expected = sorted(ref.rows(recording, "BTCUSDT"), key=ref.order_key)[:50]
    assert result.table.schema == TRADE_ARROW_SCHEMA
    assert result.num_rows == 50
    assert result.to_pylist() == expected


def test_query_trades_limit_inside_a_run_of_equal_timestamps(any_engine: QueryEngine, recording: pa.Table) -> None:
    """The limit cuts between two trades with the same timestamp: the venue's sequence decides."""
    btc = sorted(ref.rows(recording, "BTCUSDT"), key=ref.order_key)
    cut = next(i for i in range(1000, len(btc)) if btc[i]["timestamp"] == btc[i + 1]["timestamp"])
    result = any_engine.query_trades("BTCUSDT", limit=cut + 1)
    assert result.to_pylist() == btc[: cut + 1]
    assert result.to_pylist()[-1]["source_sequence"] + 1 == btc[cut + 1]["source_sequence"]


def test_query_trades_time_window_is_start_inclusive_end_exclusive(
    any_engine: QueryEngine, recording: pa.Table
) -> None:
    eth = sorted(ref.rows(recording, "ETHUSDT"), key=ref.order_key)
    start, end = eth[100]["timestamp"], eth[400]["timestamp"]
    result = any_engine.query_trades("ethusdt", start_time=start, end_time=end, limit=10_000)
    expected = [r for r in eth if start <= r["timestamp"] < end]
    assert result.to_pylist() == expected
    assert result.to_pylist()[0]["timestamp"] == start
    assert all(r["timestamp"] < end for r in result.to_pylist())


def test_query_trades_converts_other_time_zones_to_utc(engine: QueryEngine, recording: pa.Table) -> None:
    plus_two = timezone(timedelta(hours=2))
    start = datetime(2024, 8, 9, 2, 0, tzinfo=plus_two)  # 00:00 UTC
    result = engine.query_trades(start_time=start, end_time=start + timedelta(seconds=1), limit=1000)
    expected = sorted(
        (r for r in ref.rows(recording) if start <= r["timestamp"] < start + timedelta(seconds=1)),
        key=ref.order_key,
    )
    assert len(expected) > 0
    assert result.to_pylist() == expected
    assert result.table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


def test_query_trades_filters_by_exchange(engine: QueryEngine) -> None:
    assert engine.query_trades(exchange="binance", limit=5).num_rows == 5
    assert engine.query_trades(exchange="COINBASE", limit=5).num_rows == 0


def test_naive_datetimes_are_rejected(engine: QueryEngine) -> None:
    with pytest.raises(QueryError, match="timezone-aware"):
        engine.query_trades("BTCUSDT", start_time=datetime(2024, 8, 9))
    with pytest.raises(QueryError, match="timezone-aware"):
        engine.ohlcv("BTCUSDT", end_time=datetime(2024, 8, 9))
    with pytest.raises(QueryError, match="timezone-aware"):
        engine.vwap("BTCUSDT", start_time=datetime(2024, 8, 9))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1_000_001}, "limit"),
        ({"limit": True}, "limit"),
        ({"symbol": "  "}, "symbol"),
        ({"start_time": T0, "end_time": T0}, "before"),
    ],
)
def test_query_trades_validates_arguments(engine: QueryEngine, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        engine.query_trades(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("1s", timedelta(seconds=1)),
        ("1m", timedelta(minutes=1)),
        ("5m", timedelta(minutes=5)),
        (" 1h ", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("366d", timedelta(days=366)),
    ],
)
def test_parse_interval(text: str, width: timedelta) -> None:
    assert parse_interval(text) == width


@pytest.mark.parametrize("text", ["", "1", "m", "0m", "-1m", "1.5m", "1 minute", "1w", "367d", "1m; DROP TABLE x"])
def test_parse_interval_rejects(text: str) -> None:
    with pytest.raises(QueryError, match="interval"):
        parse_interval(text)


@pytest.mark.parametrize("interval", ["1m", "5m", "250ms", "1h"])
@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_ohlcv_equals_the_python_reference(
    any_engine: QueryEngine, recording: pa.Table, symbol: str, interval: str
) -> None:
    bars = any_engine.ohlcv(symbol, interval)
    expected = ref.ohlcv(ref.rows(recording, symbol), parse_interval(interval))
    assert bars.table.schema == OHLCV_SCHEMA
    assert bars.to_pylist() == expected


def test_ohlcv_first_bars_of_btcusdt(engine: QueryEngine) -> None:
    """Spot values, independently readable: the first two 1-minute BTCUSDT bars of the recording."""
    first, second = engine.ohlcv("BTCUSDT", "1m").to_pylist()[:2]
    assert first == {
        "bucket": datetime(2024, 8, 8, 23, 54, tzinfo=UTC),
        "open": Decimal("61837.63"),
        "high": Decimal("61855.37"),
        "low": Decimal("61824"),
        "close": Decimal("61828"),
        "volume": Decimal("12.43238"),
        "trades": 875,
        "vwap": Decimal("61837.512944673506"),
    }
    assert second["bucket"] == datetime(2024, 8, 8, 23, 55, tzinfo=UTC)
    assert second["open"] == first["close"]
    assert second["trades"] == 1255


def test_ohlcv_time_window_and_crossing_midnight(any_engine: QueryEngine, recording: pa.Table) -> None:
    start, end = datetime(2024, 8, 8, 23, 58, tzinfo=UTC), datetime(2024, 8, 9, 0, 2, tzinfo=UTC)
    bars = any_engine.ohlcv("BTCUSDT", "1m", start_time=start, end_time=end, exchange="BINANCE")
    trades = [r for r in ref.rows(recording, "BTCUSDT") if start <= r["timestamp"] < end]
    assert [b["bucket"].minute for b in bars.to_pylist()] == [58, 59, 0, 1]
    assert bars.to_pylist() == ref.ohlcv(trades, timedelta(minutes=1))


def test_ohlcv_without_matching_trades_is_empty(engine: QueryEngine) -> None:
    bars = engine.ohlcv("BTCUSDT", "1m", start_time=datetime(2030, 1, 1, tzinfo=UTC))
    assert bars.num_rows == 0
    assert bars.table.schema == OHLCV_SCHEMA
    assert engine.ohlcv("DOGEUSDT").num_rows == 0


def test_vwap_equals_the_python_reference(any_engine: QueryEngine, recording: pa.Table) -> None:
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert any_engine.vwap(symbol) == ref.vwap(ref.rows(recording, symbol))
    assert any_engine.vwap("BTCUSDT") == Decimal("61671.551606654178")
    start, end = datetime(2024, 8, 9, tzinfo=UTC), datetime(2024, 8, 9, 0, 1, tzinfo=UTC)
    window = [r for r in ref.rows(recording, "ETHUSDT") if start <= r["timestamp"] < end]
    assert any_engine.vwap("ETHUSDT", start_time=start, end_time=end) == ref.vwap(window)


def test_vwap_without_trades_is_none(engine: QueryEngine) -> None:
    assert engine.vwap("BTCUSDT", start_time=datetime(2030, 1, 1, tzinfo=UTC)) is None
    assert engine.vwap("BTCUSDT", exchange="KRAKEN") is None


def test_vwap_is_a_decimal_with_12_places(engine: QueryEngine) -> None:
    value = engine.vwap("ETHUSDT")
    assert isinstance(value, Decimal)
    assert value.as_tuple().exponent == -12


def test_symbols_and_stats(any_engine: QueryEngine, recording: pa.Table) -> None:
    assert any_engine.symbols() == ["BTCUSDT", "ETHUSDT"]
    stats = any_engine.stats()
    timestamps = recording.column("timestamp").to_pylist()
    on_disk = sorted(str(p) for p in Path(any_engine.table.location().removeprefix("file://")).rglob("*.parquet"))
    assert stats["rows"] == 34_419
    assert stats["snapshots"] == 2
    assert stats["files"] == len(on_disk)
    assert sorted(any_engine.plan().files) == on_disk
    assert stats["table"] == "market_data.trades"
    snapshot = any_engine.table.current_snapshot()
    assert snapshot is not None
    assert stats["snapshot_id"] == snapshot.snapshot_id
    assert stats["min_timestamp"] == min(timestamps)
    assert stats["max_timestamp"] == max(timestamps)
    assert stats["bytes"] > 0


def test_conversions_keep_exact_decimals(engine: QueryEngine) -> None:
    bars = engine.ohlcv("BTCUSDT", "5m")
    frame = bars.to_pandas()
    assert list(frame.columns) == OHLCV_SCHEMA.names
    assert frame["vwap"].tolist() == bars.table.column("vwap").to_pylist()
    assert isinstance(frame["open"].iloc[0], Decimal)
    assert str(frame["bucket"].dt.tz) == "UTC"
    polars_frame = bars.to_polars()
    assert str(polars_frame.schema["close"]) == "Decimal(precision=38, scale=12)"
    assert polars_frame["close"].to_list() == bars.table.column("close").to_pylist()
    assert polars_frame["trades"].to_list() == bars.table.column("trades").to_pylist()


def test_queries_are_timed_by_kind(engine: QueryEngine) -> None:
    def count(kind: str) -> float:
        value = REGISTRY.get_sample_value("k2_query_duration_seconds_count", {"kind": kind})
        return value or 0.0

    before = {kind: count(kind) for kind in ("trades", "ohlcv", "vwap", "sql")}
    engine.query_trades(limit=1)
    engine.ohlcv("BTCUSDT")
    engine.vwap("BTCUSDT")
    engine.sql("SELECT 1")
    assert {kind: count(kind) - before[kind] for kind in before} == {
        "trades": 1,
        "ohlcv": 1,
        "vwap": 1,
        "sql": 1,
    }


def test_empty_table(empty_lake: tuple[Catalog, LakeSettings]) -> None:
    catalog, lake = empty_lake
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        trades = engine.query_trades("BTCUSDT")
        assert trades.num_rows == 0
        assert trades.table.schema == TRADE_ARROW_SCHEMA
        assert engine.ohlcv("BTCUSDT").num_rows == 0
        assert engine.vwap("BTCUSDT") is None
        assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 0}]
        assert engine.symbols() == []
        stats = engine.stats()
        assert (stats["rows"], stats["files"], stats["snapshots"], stats["snapshot_id"]) == (0, 0, 0, None)


def test_from_settings(settings: K2Settings, recording: pa.Table) -> None:
    with pytest.raises(LakeError, match=r"no K2 table in .*: there is no catalog there"):
        QueryEngine.from_settings(settings)  # reading creates nothing
    assert not settings.lake.warehouse.exists()
    load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.TRADES)
    with QueryEngine.from_settings(settings) as engine:
        assert engine.stats()["rows"] == 0
        engine.table.append(recording.slice(0, 10))
        engine.refresh()
        result = engine.query_trades(limit=100)
    assert isinstance(result, QueryResult)
    assert result.to_pylist() == sorted(ref.rows(recording.slice(0, 10)), key=ref.order_key)


def test_one_engine_serves_several_threads(engine: QueryEngine) -> None:
    expected = (engine.vwap("ETHUSDT"), engine.ohlcv("BTCUSDT", "5m").to_pylist(), engine.symbols())

    def work(_: int) -> tuple[object, ...]:
        return (engine.vwap("ETHUSDT"), engine.ohlcv("BTCUSDT", "5m").to_pylist(), engine.symbols())

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [expected] * 8
