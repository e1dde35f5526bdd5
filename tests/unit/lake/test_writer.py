"""TableWriter against a real SQLite catalog and local warehouse: exact read-back, sorting, schema
validation, snapshot properties, metrics, and real commit conflicts between two writers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.errors import CommitConflict, LakeError
from k2.lake.orphans import sweep_orphans
from k2.lake.writer import CommitResult, TableWriter
from k2.metrics import REGISTRY
from k2.schema import TRADE_ARROW_SCHEMA
from tests.unit.lake.files import PYICEBERG, files_on_disk, referenced_files

TABLE = "market_data.trades"


def _writer(catalog: Catalog, lake: LakeSettings) -> TableWriter:
    return TableWriter(catalog, (lake.namespace, lake.trades_table), lake)


def _read_all(writer: TableWriter) -> pa.Table:
    writer.table.refresh()
    return writer.table.scan().to_arrow()


def _same_rows(got: pa.Table, want: pa.Table | pa.RecordBatch) -> None:
    want_t = want if isinstance(want, pa.Table) else pa.Table.from_batches([want])
    got_s = got.cast(TRADE_ARROW_SCHEMA).sort_by("platform_sequence")
    want_s = want_t.sort_by("platform_sequence")
    assert got_s.num_rows == want_s.num_rows
    assert got_s.to_pylist() == want_s.to_pylist()


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"table": TABLE}) or 0.0


def test_append_reads_back_every_row_exactly(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = _writer(catalog, lake)
    rows_before = _sample("k2_lake_rows_written_total")
    commits_before = _sample("k2_lake_commit_duration_seconds_count")
    batch_rows_before = _sample("k2_lake_batch_rows_sum")

    result = writer.append(trades)

    assert isinstance(result, CommitResult)
    assert result.rows == 34_419
    assert result.attempts == 1
    assert result.duration_s > 0
    snapshot = writer.table.current_snapshot()
    assert snapshot is not None
    assert result.snapshot_id == snapshot.snapshot_id
    got = _read_all(writer)
    _same_rows(got, trades)
    first = got.filter(pc.equal(got["trade_id"], "3735683259")).to_pylist()[0]
    assert first["price"] == Decimal("61837.630000000000")
    assert first["quantity"] == Decimal("0.020000000000")
    assert got.schema.field("price").type == pa.decimal128(38, 12)
    assert _sample("k2_lake_rows_written_total") - rows_before == 34_419
    assert _sample("k2_lake_commit_duration_seconds_count") - commits_before == 1
    assert _sample("k2_lake_batch_rows_sum") - batch_rows_before == 34_419
    stats = writer.get_stats()
    assert stats["commits"] == 1
    assert stats["rows"] == 34_419
    assert stats["conflicts"] == 0
    assert stats["last_snapshot_id"] == snapshot.snapshot_id
    assert stats["last_commit_seconds"] == result.duration_s


def test_data_files_are_sorted_by_symbol_then_timestamp(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    writer.append(trades)
    tasks = list(writer.table.scan().plan_files())
    assert tasks
    for task in tasks:
        path = task.file.file_path.removeprefix("file://")
        data = pq.read_table(path, columns=["symbol", "timestamp"])
        assert data.num_rows == task.file.record_count
        assert data.equals(data.sort_by([("symbol", "ascending"), ("timestamp", "ascending")]))


def test_accepts_a_table_or_a_sequence_of_batches(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = _writer(catalog, lake)
    first = writer.append([trades.slice(0, 100), trades.slice(100, 50)])
    second = writer.append(pa.Table.from_batches([trades.slice(150, 25)]))
    assert (first.rows, second.rows) == (150, 25)
    _same_rows(_read_all(writer), trades.slice(0, 175))


def test_snapshot_properties_land_in_the_snapshot_summary(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    props = {"k2.kafka.offsets": '{"market.trades.binance":{"0":41,"1":7}}', "k2.writer": "test"}
    result = writer.append(trades.slice(0, 10), snapshot_properties=props)
    snapshot = writer.table.snapshot_by_id(result.snapshot_id)
    assert snapshot is not None
    assert snapshot.summary is not None
    assert snapshot.summary["k2.kafka.offsets"] == props["k2.kafka.offsets"]
    assert snapshot.summary["k2.writer"] == "test"
    assert snapshot.summary["added-records"] == "10"


def test_reserved_or_non_text_snapshot_properties_are_rejected(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    with pytest.raises(LakeError, match="'total-records' is reserved"):
        writer.append(trades.slice(0, 1), snapshot_properties={"total-records": "5"})
    with pytest.raises(LakeError, match="str -> str"):
        writer.append(trades.slice(0, 1), snapshot_properties={"offset": 5})  # type: ignore[dict-item]
    assert writer.table.current_snapshot() is None


def test_empty_input_is_a_no_op_unless_it_carries_properties(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    assert writer.append([]) == CommitResult(snapshot_id=0, rows=0, duration_s=0.0, attempts=0)
    assert writer.append(trades.slice(0, 0)).attempts == 0
    assert writer.table.current_snapshot() is None

    result = writer.append([], snapshot_properties={"k2.kafka.offsets": "9"})
    assert (result.rows, result.attempts) == (0, 1)
    snapshot = writer.table.current_snapshot()
    assert snapshot is not None
    assert snapshot.summary is not None
    assert snapshot.snapshot_id == result.snapshot_id
    assert snapshot.summary["k2.kafka.offsets"] == "9"
    assert snapshot.summary["total-records"] == "0"


def test_float_prices_are_refused_with_a_clear_message(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    batch = trades.slice(0, 5)
    idx = TRADE_ARROW_SCHEMA.get_field_index("price")
    floats = batch.set_column(idx, pa.field("price", pa.float64(), False), batch.column("price").cast(pa.float64()))
    with pytest.raises(LakeError, match=r"column 'price' is double, the table has decimal128\(38, 12\)"):
        writer.append(floats)
    missing = batch.drop_columns(["side"])
    with pytest.raises(LakeError, match="missing column 'side'"):
        writer.append(missing)
    extra = batch.append_column("venue", pa.array(["x"] * 5))
    with pytest.raises(LakeError, match="unexpected column 'venue'"):
        writer.append(extra)
    with pytest.raises(LakeError, match="expected pyarrow RecordBatch"):
        writer.append([batch, "not a batch"])  # type: ignore[list-item]
    assert writer.table.current_snapshot() is None


def test_missing_table_is_a_lake_error(catalog: Catalog, lake: LakeSettings) -> None:
    with pytest.raises(LakeError, match=r"no Iceberg table 'market_data\.nope'"):
        TableWriter(catalog, ("market_data", "nope"), lake)


def _parquet_files(warehouse: Path) -> set[str]:
    return {p.name for p in warehouse.rglob("*.parquet")}


def test_a_stale_writer_reloads_and_retries_on_conflict(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    first = _writer(catalog, lake)
    stale = _writer(catalog, lake)  # loaded now: stale once `first` commits
    conflicts_before = _sample("k2_lake_commit_conflicts_total")

    a = first.append(trades.slice(0, 300), snapshot_properties={"k2.writer": "a"})
    b = stale.append(trades.slice(300, 200), snapshot_properties={"k2.writer": "b"})

    assert (a.attempts, b.attempts) == (1, 2)
    assert _sample("k2_lake_commit_conflicts_total") - conflicts_before == 1
    assert stale.get_stats()["conflicts"] == 1
    snapshot = stale.table.current_snapshot()
    assert snapshot is not None
    assert snapshot.summary is not None
    assert snapshot.snapshot_id == b.snapshot_id
    assert snapshot.parent_snapshot_id == a.snapshot_id
    assert snapshot.summary["k2.writer"] == "b"
    assert snapshot.summary["total-records"] == "500"
    _same_rows(_read_all(first), trades.slice(0, 500))
    # The retry committed the same data files again: nothing was written twice or left behind.
    referenced = {Path(t.file.file_path).name for t in first.table.scan().plan_files()}
    assert _parquet_files(lake.warehouse) == referenced
    if PYICEBERG < (0, 12):  # 0.11 leaves the failed attempt's manifest list behind: an orphan for the sweep
        sweep_orphans(first.table, min_age_s=0)
    assert files_on_disk(first.table) == referenced_files(first.table)


def test_conflict_retries_exhausted_raise_commit_conflict_and_leave_no_files(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    strict = lake.model_copy(update={"commit_retries": 0})
    first = _writer(catalog, lake)
    stale = TableWriter(catalog, (lake.namespace, lake.trades_table), strict)
    first.append(trades.slice(0, 100))
    files_before = _parquet_files(lake.warehouse)

    with pytest.raises(CommitConflict, match="still conflicted after 1 attempts") as info:
        stale.append(trades.slice(100, 100))

    assert info.value.retryable is True
    assert _parquet_files(lake.warehouse) == files_before
    _same_rows(_read_all(first), trades.slice(0, 100))
    # The writer reloaded the table before raising: its next attempt commits at once.
    assert stale.append(trades.slice(100, 100)).attempts == 1
    _same_rows(_read_all(first), trades.slice(0, 200))
