"""Scan planning: partition and metrics pruning, the per-snapshot plan cache, refresh, odd layouts."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC

from k2.config import LakeSettings
from k2.errors import QueryError
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.query import QueryEngine, ScanFilter
from k2.query.files import data_path
from k2.schema.kinds import RecordKind
from tests.unit.query import reference as ref
from tests.unit.query.conftest import SPLIT, create_table, fill


def _partition_dirs(files: tuple[str, ...]) -> list[str]:
    return sorted("/".join(f.split("/")[-3:-1]) for f in files)


def test_full_plan_lists_every_data_file(day_symbol_engine: QueryEngine) -> None:
    plan = day_symbol_engine.plan()
    assert plan.rows == 34_419
    assert _partition_dirs(plan.files) == [
        "timestamp_day=2024-08-08/symbol=BTCUSDT",
        "timestamp_day=2024-08-08/symbol=ETHUSDT",
        "timestamp_day=2024-08-09/symbol=BTCUSDT",
        "timestamp_day=2024-08-09/symbol=BTCUSDT",
        "timestamp_day=2024-08-09/symbol=ETHUSDT",
        "timestamp_day=2024-08-09/symbol=ETHUSDT",
    ]
    assert all(os.path.isfile(f) for f in plan.files)


def test_one_symbol_one_hour_plans_one_partition(day_symbol_engine: QueryEngine, recording: pa.Table) -> None:
    start = datetime(2024, 8, 8, 23, tzinfo=UTC)
    plan = day_symbol_engine.plan("BTCUSDT", start_time=start, end_time=start + timedelta(hours=1))
    assert len(plan.files) == 1 < len(day_symbol_engine.plan().files)
    assert _partition_dirs(plan.files) == ["timestamp_day=2024-08-08/symbol=BTCUSDT"]
    btc_before_midnight = [r for r in ref.rows(recording, "BTCUSDT") if r["timestamp"] < start + timedelta(hours=1)]
    assert plan.rows == len(btc_before_midnight)


def test_column_metrics_prune_files_inside_a_partition(day_symbol_engine: QueryEngine, recording: pa.Table) -> None:
    """2024-08-09/BTCUSDT has a file per commit; a window after the first commit's last trade skips it."""
    first_commit_end = max(recording.slice(0, SPLIT).column("timestamp").to_pylist())
    day = day_symbol_engine.plan("BTCUSDT", start_time=datetime(2024, 8, 9, tzinfo=UTC))
    late = day_symbol_engine.plan("BTCUSDT", start_time=first_commit_end + timedelta(seconds=1))
    assert len(day.files) == 2
    assert len(late.files) == 1
    assert late.files[0] in day.files
    second_commit = recording.slice(SPLIT)
    btc = pc.equal(second_commit.column("symbol"), "BTCUSDT")
    assert late.rows == second_commit.filter(btc).num_rows


def test_exchange_is_pruned_by_column_metrics(engine: QueryEngine) -> None:
    assert engine.plan(exchange="COINBASE").files == ()
    assert engine.plan(exchange="BINANCE").files == engine.plan().files


def test_the_production_layout_prunes_a_one_hour_query(engine: QueryEngine, recording: pa.Table) -> None:
    """Whatever spec the lake chose (day partitions today), one symbol-hour plans fewer files than all."""
    start = datetime(2024, 8, 8, 23, tzinfo=UTC)
    hour = engine.plan("BTCUSDT", start_time=start, end_time=start + timedelta(hours=1))
    everything = engine.plan()
    assert 0 < len(hour.files) < len(everything.files)
    assert everything.rows == recording.num_rows
    before_midnight = [r for r in ref.rows(recording, "BTCUSDT") if r["timestamp"] < start + timedelta(hours=1)]
    assert hour.rows >= len(before_midnight)
    assert engine.query_trades(
        "BTCUSDT", start_time=start, end_time=start + timedelta(hours=1), limit=100_000
    ).num_rows == len(before_midnight)


def test_plan_carries_metrics_bounds(day_symbol_engine: QueryEngine, recording: pa.Table) -> None:
    plan = day_symbol_engine.plan("ETHUSDT")
    eth = recording.filter(pc.equal(recording.column("symbol"), "ETHUSDT"))
    max_price = pc.max(eth.column("price")).as_py()
    max_qty = pc.max(eth.column("quantity")).as_py()
    assert plan.max_abs_price == int(max_price.scaleb(12))
    assert plan.max_abs_quantity == int(max_qty.scaleb(12))
    assert plan.filter == ScanFilter(symbol="ETHUSDT")


def test_plans_are_cached_per_snapshot_and_replaced_after_an_append(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    fill(catalog, lake, recording)
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        first = engine.plan("BTCUSDT")
        again = engine.plan("btcusdt")  # same filter after normalisation
        assert again is first
        info = engine.cache_info()
        assert (info.hits, info.misses, info.entries) == (1, 1, 1)
        before = engine.query_trades("BTCUSDT", limit=1_000_000).num_rows

        # Another writer appends a day later; the engine keeps its snapshot until refreshed.
        later = recording.slice(0, 100).set_column(
            5,
            recording.schema.field("timestamp"),
            pc.add(recording.column("timestamp").slice(0, 100), pa.scalar(timedelta(days=1))),
        )
        load_or_create_table(catalog, lake, RecordKind.TRADES).append(later)
        assert engine.plan("BTCUSDT") is first
        assert engine.query_trades("BTCUSDT", limit=1_000_000).num_rows == before

        engine.refresh()
        fresh = engine.plan("BTCUSDT")
        assert fresh is not first
        assert fresh.snapshot_id != first.snapshot_id
        assert set(first.files) < set(fresh.files)
        assert engine.cache_info().entries == 1  # plans of the old snapshot were dropped
        new_btc = sum(1 for s in later.column("symbol").to_pylist() if s == "BTCUSDT")
        assert engine.query_trades("BTCUSDT", limit=1_000_000).num_rows == before + new_btc
        assert engine.stats()["rows"] == 34_419 + 100
        assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 34_419 + 100}]


def test_refresh_interval_zero_sees_every_new_snapshot(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    with QueryEngine(catalog, lake, refresh_interval_s=0.0) as engine:
        assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 0}]
        table = load_or_create_table(catalog, lake, RecordKind.TRADES)
        table.append(recording.slice(0, 500))
        assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 500}]
        assert engine.symbols() == sorted(set(recording.slice(0, 500).column("symbol").to_pylist()))
        table.append(recording.slice(500, 500))
        assert engine.stats()["rows"] == 1000
        assert engine.query_trades(limit=5000).num_rows == 1000


def test_a_vanished_data_file_is_a_query_error(empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table) -> None:
    catalog, lake = empty_lake
    fill(catalog, lake, recording)
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        plan = engine.plan("ETHUSDT")
        os.remove(plan.files[0])
        with pytest.raises(QueryError, match="cannot read"):
            engine.vwap("ETHUSDT")


def test_unpartitioned_table_gives_the_same_answers(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    """The engine relies on pyiceberg planning only, not on a particular partition spec."""
    catalog, lake = empty_lake
    create_table(catalog, lake, UNPARTITIONED_PARTITION_SPEC)
    load_or_create_table(catalog, lake, RecordKind.TRADES).append(recording)
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        assert len(engine.plan().files) == 1
        assert engine.plan().single_symbol_files == ()  # both symbols in one file: symbols() scans it
        assert engine.symbols() == ["BTCUSDT", "ETHUSDT"]
        assert engine.vwap("ETHUSDT") == ref.vwap(ref.rows(recording, "ETHUSDT"))
        assert engine.ohlcv("BTCUSDT", "1m").to_pylist() == ref.ohlcv(
            ref.rows(recording, "BTCUSDT"), timedelta(minutes=1)
        )


def test_data_path() -> None:
    assert data_path("file:///tmp/wh/a.parquet") == "/tmp/wh/a.parquet"
    assert data_path("/tmp/wh/a.parquet") == "/tmp/wh/a.parquet"
    assert data_path("s3://bucket/wh/a.parquet") == "s3://bucket/wh/a.parquet"  # read through k2.query.files
    assert data_path("s3a://bucket/wh/a.parquet") == "s3a://bucket/wh/a.parquet"
    with pytest.raises(QueryError, match=r"only local and s3:// warehouses"):
        data_path("gs://bucket/a.parquet")


def test_separate_catalog_handles_see_the_same_table(filled_lake: tuple[Catalog, LakeSettings]) -> None:
    _, lake = filled_lake
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        assert engine.stats()["rows"] == 34_419


def test_filters_the_metrics_imply_are_not_reapplied(day_symbol_engine: QueryEngine) -> None:
    """Files partitioned by day and symbol hold only matching rows for a symbol or a whole-day query."""
    assert day_symbol_engine.plan("BTCUSDT").filter_implied
    assert day_symbol_engine.plan("BTCUSDT").sql_where() == ("true", {})
    day = datetime(2024, 8, 8, tzinfo=UTC)
    assert day_symbol_engine.plan("ETHUSDT", start_time=day, end_time=day + timedelta(days=1)).filter_implied
    window = day_symbol_engine.plan("ETHUSDT", start_time=day + timedelta(hours=23, minutes=58))
    assert not window.filter_implied
    assert window.implied == {"symbol"}  # every file of the partition holds ETHUSDT only
    where, params = window.sql_where()
    assert where == '"timestamp" >= $start_time'
    assert params == {"start_time": day + timedelta(hours=23, minutes=58)}
    whole = day_symbol_engine.plan(exchange="binance", symbol="BTCUSDT", end_time=day + timedelta(days=1))
    assert whole.filter_implied  # only the 2024-08-08 file, entirely before the end
    cut = day_symbol_engine.plan(exchange="binance", symbol="BTCUSDT", end_time=day + timedelta(days=1, seconds=30))
    assert len(cut.files) == 2
    assert not cut.filter_implied


def test_implied_predicates_on_the_production_layout(engine: QueryEngine) -> None:
    """A whole-day query on day partitions never re-checks the time; the symbol only when files mix symbols."""
    day = datetime(2024, 8, 8, tzinfo=UTC)
    plan = engine.plan("BTCUSDT", start_time=day, end_time=day + timedelta(days=1))
    assert {"start_time", "end_time"} <= plan.implied
    if "symbol" in plan.implied:
        assert plan.sql_where() == ("true", {})
    else:
        assert plan.sql_where() == ("symbol = $symbol", {"symbol": "BTCUSDT"})
