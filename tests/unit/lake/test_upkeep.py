"""The whole maintenance run: orphan sweep with its safety age, data retention (off by default),
health figures and metrics, and the report. Real SQLite catalog, real files on disk."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings, MaintenanceSettings
from k2.errors import LakeError
from k2.lake.compaction import small_file_bytes
from k2.lake.datafiles import write_data_files
from k2.lake.health import table_health
from k2.lake.orphans import sweep_orphans
from k2.lake.retention import retention_cutoff, time_column
from k2.lake.upkeep import maintain_table
from k2.lake.writer import TableWriter
from k2.metrics import REGISTRY
from k2.schema import TRADE_ARROW_SCHEMA
from tests.unit.lake.files import files_on_disk, referenced_files

ROWS = 500


def _writer(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch, commits: int) -> TableWriter:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(commits):
        writer.append(trades.slice(i * ROWS, ROWS), snapshot_properties={"k2.platform-sequence": str(i)})
    return writer


def test_orphans_are_swept_only_after_their_safety_age(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake, trades, 3)
    table = writer.table
    # What a crash between writing and committing leaves: data files nothing references.
    stray = write_data_files(table.metadata, table.io, pa.Table.from_batches([trades.slice(0, 100)]))
    stray_paths = [f.file_path for f in stray]
    assert all(os.path.exists(p.removeprefix("file://")) for p in stray_paths)
    size = sum(os.path.getsize(p.removeprefix("file://")) for p in stray_paths)

    young = sweep_orphans(table, min_age_s=3600)
    assert (young.deleted, young.kept_young, young.kept_young_bytes) == ([], len(stray), size)
    assert all(os.path.exists(p.removeprefix("file://")) for p in stray_paths)

    later = sweep_orphans(table, min_age_s=3600, now_s=time.time() + 3601)
    assert sorted(later.deleted) == sorted(stray_paths)
    assert later.deleted_bytes == size
    assert files_on_disk(table) == referenced_files(table)
    assert table.scan().to_arrow().num_rows == 3 * ROWS


def test_retention_drops_whole_days_and_keeps_the_rest(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    writer.append(trades, snapshot_properties={"k2.platform-sequence": "34419"})  # 2024-08-08 23:54 .. 08-09 00:05
    table = writer.table
    assert time_column(table) == "timestamp"
    now = datetime(2024, 8, 10, 12, 0, tzinfo=UTC)
    assert retention_cutoff(now, 1) == datetime(2024, 8, 9, tzinfo=UTC)
    policy = MaintenanceSettings(retention_days={"trades": 1}, compact=False, remove_orphans=False)

    report = maintain_table(
        catalog, (lake.namespace, "trades"), lake.model_copy(update={"maintenance": policy}), now=now
    )

    assert report.errors == {}
    assert report.retention_cutoff == datetime(2024, 8, 9, tzinfo=UTC)
    table.refresh()
    left = table.scan().to_arrow().cast(TRADE_ARROW_SCHEMA)
    want = pa.Table.from_batches([trades]).filter(
        pa.compute.greater_equal(trades.column("timestamp"), pa.scalar(datetime(2024, 8, 9, tzinfo=UTC)))
    )
    assert 0 < left.num_rows == want.num_rows < trades.num_rows
    assert sorted(left.column("message_id").to_pylist()) == sorted(want.column("message_id").to_pylist())
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary.operation.value == "delete"
    assert (snapshot.summary["k2.operation"], snapshot.summary["k2.platform-sequence"]) == ("retention", "34419")
    # Off by default, and run again with nothing older: no new snapshot.
    assert MaintenanceSettings().retention_days == {}
    again = maintain_table(
        catalog, (lake.namespace, "trades"), lake.model_copy(update={"maintenance": policy}), now=now
    )
    assert again.retention_snapshot is None


def test_a_maintenance_run_compacts_expires_sweeps_and_exports_health(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    lake = lake.model_copy(
        update={
            "keep_snapshots": 2,
            "maintenance": MaintenanceSettings(snapshot_grace_s=0, orphan_min_age_s=0, target_file_bytes=10**8),
        }
    )
    writer = _writer(catalog, lake, trades, 12)
    table = writer.table
    stray = write_data_files(table.metadata, table.io, pa.Table.from_batches([trades.slice(0, 10)]))

    report = maintain_table(catalog, (lake.namespace, "trades"), lake)

    assert report.errors == {}
    assert (report.before.data_files, report.before.small_files, report.before.partitions) == (12, 12, 1)
    assert report.after is not None
    assert (report.after.data_files, report.after.partitions, report.after.max_partition_files) == (1, 1, 1)
    assert report.after.records == 12 * ROWS
    assert report.compaction is not None and report.compaction.files_removed == 12
    assert report.orphans is not None and report.orphans.deleted == [f.file_path for f in stray]
    table.refresh()
    assert files_on_disk(table) == referenced_files(table)
    assert len(table.metadata.snapshots) == 2
    head = table.current_snapshot()
    assert head is not None and head.summary is not None and head.summary["k2.platform-sequence"] == "11"

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"table": "market_data.trades"})

    assert gauge("k2_lake_data_files") == 1
    assert gauge("k2_lake_small_data_files") == 1
    assert gauge("k2_lake_partition_max_files") == 1
    assert gauge("k2_lake_retained_snapshots") == 2
    assert gauge("k2_lake_orphan_bytes") == 0
    assert gauge("k2_lake_data_file_avg_bytes") == report.after.avg_file_bytes > 0
    assert time.time() - (gauge("k2_lake_last_maintenance_timestamp_seconds") or 0) < 60
    assert report.as_dict()["compacted_files"] == 12


def test_a_failing_step_is_reported_and_the_others_still_run(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake, trades, 6)
    first = writer.table.metadata.snapshots[0]
    os.remove(first.manifest_list.removeprefix("file://"))  # the sweep must read every manifest list
    lake = lake.model_copy(update={"maintenance": MaintenanceSettings(target_file_bytes=10**8)})
    failures = REGISTRY.get_sample_value(
        "k2_lake_maintenance_failures_total", {"table": "market_data.trades", "operation": "remove_orphans"}
    )

    report = maintain_table(catalog, (lake.namespace, "trades"), lake)

    assert set(report.errors) == {"remove_orphans"}
    assert report.compaction is not None and report.compaction.files_removed == 6
    after = REGISTRY.get_sample_value(
        "k2_lake_maintenance_failures_total", {"table": "market_data.trades", "operation": "remove_orphans"}
    )
    assert (after or 0) - (failures or 0) == 1


def test_health_counts_small_files_per_partition(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(4):
        writer.append(trades.slice(15_000 + i * 300, 300))  # midnight is at row 15,836: two days
    health = table_health(writer.table, small_file_bytes(10**8))
    files = [t.file for t in writer.table.scan().plan_files()]
    assert health.data_files == len(files) == health.small_files
    assert health.partitions == 2
    assert health.bytes == sum(f.file_size_in_bytes for f in files)
    assert health.records == 1200
    assert health.snapshots == 4


def test_retention_needs_days_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        MaintenanceSettings(retention_days={"trades": 0})
    with pytest.raises(LakeError, match="cannot load table"):
        maintain_table(_missing_catalog(), ("market_data", "nope"), LakeSettings())


def _missing_catalog() -> Catalog:
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("missing", uri="sqlite:///:memory:", warehouse="file:///nonexistent")
