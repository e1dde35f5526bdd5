"""Maintenance keeps snapshots, manifests and metadata files bounded, deletes only files no retained
snapshot needs, and never loses a row. Real SQLite catalog, real files on disk."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import LakeSettings
from k2.errors import LakeError
from k2.lake import maintenance
from k2.lake.catalog import create_table
from k2.lake.writer import TableWriter
from k2.metrics import REGISTRY
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind
from tests.unit.lake.files import files_on_disk, referenced_files


def _rows(table: Table, snapshot_id: int | None = None) -> list[dict[str, object]]:
    data = table.scan(snapshot_id=snapshot_id).to_arrow().cast(TRADE_ARROW_SCHEMA)
    return data.sort_by("platform_sequence").to_pylist()


def _expected(trades: pa.RecordBatch, n: int) -> list[dict[str, object]]:
    return pa.Table.from_batches([trades.slice(0, n)]).sort_by("platform_sequence").to_pylist()


def test_many_commits_stay_bounded_and_read_back_exactly(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    lake = lake.model_copy(update={"keep_snapshots": 5, "maintenance_every_commits": 3})
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    runs_before = REGISTRY.get_sample_value(
        "k2_lake_maintenance_duration_seconds_count",
        {"table": "market_data.trades", "operation": "expire_snapshots"},
    )
    largest = 0
    for i in range(60):
        writer.append(trades.slice(i * 20, 20), snapshot_properties={"k2.batch": str(i)})
        stats = maintenance.table_stats(writer.table)
        largest = max(largest, stats.snapshots)
        # commit.manifest.min-count-to-merge, plus the appends until the next maintenance run
        assert stats.manifests <= 16 + 3

    # keep 5, maintenance every 3 commits, and the snapshot of a manifest merge on top of the 5 kept
    assert largest == 8
    assert writer.get_stats()["maintenance_runs"] == 20
    runs_after = REGISTRY.get_sample_value(
        "k2_lake_maintenance_duration_seconds_count",
        {"table": "market_data.trades", "operation": "expire_snapshots"},
    )
    assert (runs_after or 0) - (runs_before or 0) == 20
    stats = maintenance.table_stats(writer.table)
    assert (stats.snapshots, stats.records, stats.data_files) == (5, 1200, 60)  # one file per commit
    # pyiceberg honours write.metadata.delete-after-commit / previous-versions-max = 20.
    assert stats.metadata_log_entries == 20
    assert stats.metadata_files_on_disk == 21
    # Exactly the files the retained snapshots reference are left on disk.
    assert files_on_disk(writer.table) == referenced_files(writer.table)
    assert _rows(writer.table) == _expected(trades, 1200)
    # A reader holding the oldest retained snapshot still reads it completely.
    oldest = min(writer.table.metadata.snapshots, key=lambda s: s.sequence_number or 0)
    assert oldest.summary is not None
    assert oldest.summary["k2.batch"] == "55"
    assert _rows(writer.table, oldest.snapshot_id) == _expected(trades, 56 * 20)


def test_expiring_after_a_delete_removes_the_deleted_data_files(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(3):
        writer.append(trades.slice(i * 100, 100))
    table = writer.table
    table.delete("symbol == 'ETHUSDT'")
    assert len(table.metadata.snapshots) == 4
    _, _, data_before = files_on_disk(table)

    result = maintenance.expire_snapshots(table, keep=1)

    assert len(result.expired) == 3
    lists, manifests, data = files_on_disk(table)
    assert (lists, manifests, data) == referenced_files(table)
    assert len(data) == 3
    assert len(data_before) == 6  # 3 appended files + their BTCUSDT-only rewrites by the delete
    deleted_names = {Path(p).name for p in result.deleted_files}
    assert data_before - data == {n for n in deleted_names if n.endswith(".parquet")}
    btc = [r for r in _expected(trades, 300) if r["symbol"] == "BTCUSDT"]
    assert _rows(table) == btc


def test_expire_keeps_everything_when_there_is_little_history(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    writer.append(trades.slice(0, 10))
    assert maintenance.expire_snapshots(writer.table, keep=1) == maintenance.ExpireResult((), ())
    with pytest.raises(LakeError, match="keep must be at least 1"):
        maintenance.expire_snapshots(writer.table, keep=0)


def test_table_stats_counts_exactly(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    assert maintenance.table_stats(writer.table).as_dict() == {
        "snapshots": 0,
        "manifests": 0,
        "data_files": 0,
        "records": 0,
        "metadata_log_entries": 0,
        "metadata_files_on_disk": 1,
    }
    for i in range(3):
        writer.append(trades.slice(i * 10, 10))
    assert maintenance.table_stats(writer.table).as_dict() == {
        "snapshots": 3,
        "manifests": 3,
        "data_files": 3,
        "records": 30,
        "metadata_log_entries": 3,
        "metadata_files_on_disk": 4,
    }


def _unmerged_table(catalog: Catalog, lake: LakeSettings) -> tuple[str, str]:
    identifier = (lake.namespace, "unmerged")
    create_table(catalog, identifier, RecordKind.TRADES, properties={"commit.manifest-merge.enabled": "false"})
    return identifier


def test_merge_manifests_rewrites_them_and_carries_custom_properties(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = TableWriter(catalog, _unmerged_table(catalog, lake), lake)
    for i in range(6):
        writer.append(trades.slice(i * 10, 10), snapshot_properties={"k2.kafka.offsets": str(i)})
    assert maintenance.table_stats(writer.table).manifests == 6

    snapshot_id = maintenance.merge_manifests(writer.table)

    snapshot = writer.table.current_snapshot()
    assert snapshot is not None
    assert snapshot.summary is not None
    assert snapshot.snapshot_id == snapshot_id
    assert snapshot.summary["k2.kafka.offsets"] == "5"
    assert snapshot.summary["k2.operation"] == "merge-manifests"
    assert snapshot.summary["total-records"] == "60"
    assert maintenance.table_stats(writer.table).manifests == 1
    assert _rows(writer.table) == _expected(trades, 60)
    assert maintenance.merge_manifests(writer.table) is None  # nothing left to merge


def test_writer_merges_manifests_that_piled_up(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    lake = lake.model_copy(update={"maintenance_every_commits": 1000})
    writer = TableWriter(catalog, _unmerged_table(catalog, lake), lake)
    for i in range(17):
        writer.append(trades.slice(i * 10, 10))
    assert maintenance.table_stats(writer.table).manifests == 17

    writer.maintain()

    stats = maintenance.table_stats(writer.table)
    assert (stats.manifests, stats.records, stats.snapshots) == (1, 170, 18)
    assert _rows(writer.table) == _expected(trades, 170)


def test_a_failing_maintenance_does_not_fail_the_committed_append(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    lake = lake.model_copy(update={"keep_snapshots": 1, "maintenance_every_commits": 3})
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    first = writer.append(trades.slice(0, 10))
    writer.append(trades.slice(10, 10))
    snapshot = writer.table.snapshot_by_id(first.snapshot_id)
    assert snapshot is not None
    # Expiring the first snapshot reads its manifest list: make that impossible.
    Path(snapshot.manifest_list.removeprefix("file://")).unlink()

    with pytest.raises(LakeError, match=r"maintenance of market_data\.trades failed"):
        writer.maintain()
    result = writer.append(trades.slice(20, 10))  # the third commit runs the automatic maintenance

    assert (result.rows, result.attempts) == (10, 1)
    assert writer.get_stats()["maintenance_runs"] == 0
    assert maintenance.table_stats(writer.table).records == 30
