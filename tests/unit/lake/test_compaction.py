"""Compaction: a table of many small commits ends with the target number of files per partition,
every row exactly once (read back from the table), each file sorted, the snapshot properties carried
forward, and a concurrent writer's commit never lost. Real SQLite catalog, real files on disk."""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.bus.offsets import table_offsets
from k2.config import LakeSettings
from k2.lake import maintenance
from k2.lake.catalog import open_catalog
from k2.lake.compaction import compact, plan_compaction, small_file_bytes
from k2.lake.writer import TableWriter
from k2.schema import TRADE_ARROW_SCHEMA
from tests.unit.lake.files import files_on_disk, referenced_files

COMMITS = 120
ROWS = 250  # 30,000 of the bundled trades: both sides of midnight, two day partitions


def _live_files(table: Table) -> dict[str, list[tuple[str, int, int]]]:
    """Partition -> [(path, bytes, rows)] of the current snapshot."""
    out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for task in table.scan().plan_files():
        f = task.file
        out[str(f.partition)].append((f.file_path, f.file_size_in_bytes, f.record_count))
    return dict(out)


def _rows(table: Table) -> pa.Table:
    return table.scan().to_arrow().cast(TRADE_ARROW_SCHEMA).sort_by("message_id")


def _fragmented(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch, commits: int = COMMITS) -> TableWriter:
    lake = lake.model_copy(update={"maintenance_every_commits": 10})
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(commits):
        writer.append(trades.slice(i * ROWS, ROWS), snapshot_properties={"k2.batch": str(i)})
    return writer


def _sorted(path: str) -> bool:
    data = pq.read_table(path.removeprefix("file://"), columns=["symbol", "timestamp"])
    return data.equals(data.sort_by([("symbol", "ascending"), ("timestamp", "ascending")]))


def test_small_commits_are_compacted_to_the_target_with_every_row_once(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _fragmented(catalog, lake, trades)
    table = writer.table
    before = _live_files(table)
    assert len(before) == 2 and sum(len(v) for v in before.values()) > COMMITS  # one file per day touched
    expected = pa.Table.from_batches([trades.slice(0, COMMITS * ROWS)]).sort_by("message_id")
    big_day = max(before, key=lambda p: len(before[p]))
    target = sum(size for _, size, _ in before[big_day]) // 3 + 1  # three files for the bigger day
    assert all(size < small_file_bytes(target) for files in before.values() for _, size, _ in files)

    result = compact(table, target, min_files=5)

    after = _live_files(table)
    want = {p: math.ceil(sum(size for _, size, _ in files) / target) for p, files in before.items()}
    assert {p: len(files) for p, files in after.items()} == want
    assert want[big_day] == 3
    assert (result.files_removed, result.files_added, result.rows) == (
        sum(len(v) for v in before.values()),
        sum(want.values()),
        COMMITS * ROWS,
    )
    # Every row exactly once, every value equal: read back from the table, not from K2's counters.
    got = _rows(table)
    assert got.num_rows == COMMITS * ROWS
    assert len(set(got.column("message_id").to_pylist())) == got.num_rows
    assert got.equals(expected.cast(TRADE_ARROW_SCHEMA))
    # Each new file is sorted by the table's sort order; their metadata counts the rows they hold.
    for files in after.values():
        for path, _, rows in files:
            assert _sorted(path)
            assert pq.read_metadata(path.removeprefix("file://")).num_rows == rows
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary.operation.value == "overwrite"
    assert snapshot.summary["k2.operation"] == "compact"
    assert snapshot.summary["k2.batch"] == str(COMMITS - 1)  # carried forward from the parent
    assert snapshot.summary["total-records"] == str(COMMITS * ROWS)
    # Nothing left to do: a second run plans nothing.
    assert plan_compaction(table, target, min_files=5) == []


def test_replaced_files_stay_for_the_grace_then_go(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _fragmented(catalog, lake, trades, commits=20)
    table = writer.table
    old = {path for files in _live_files(table).values() for path, _, _ in files}
    result = compact(table, 10**9, min_files=5)
    assert result.snapshot_id is not None
    snapshot = table.snapshot_by_id(result.snapshot_id)
    assert snapshot is not None
    parent = snapshot.parent_snapshot_id

    kept = maintenance.expire_snapshots(table, keep=1, grace_s=600, now_ms=snapshot.timestamp_ms + 599_000)
    # The compaction's parent is the last snapshot referencing the replaced files: kept, files on disk.
    assert parent not in kept.expired
    assert {s.snapshot_id for s in table.metadata.snapshots} == {parent, result.snapshot_id}
    _, _, data = files_on_disk(table)
    assert {p.rsplit("/", 1)[1] for p in old} <= data

    gone = maintenance.expire_snapshots(table, keep=1, grace_s=600, now_ms=snapshot.timestamp_ms + 601_000)
    assert gone.expired == (parent,)
    assert files_on_disk(table) == referenced_files(table)
    _, _, data = files_on_disk(table)
    assert not {p.rsplit("/", 1)[1] for p in old} & data
    assert _rows(table).num_rows == 20 * ROWS


def test_a_writer_committing_during_compaction_keeps_its_rows_and_offsets(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    """The writer commits between the compaction's read and its commit (forced by the hook): the
    compaction's first commit conflicts, it is rebuilt on the writer's snapshot and lands."""
    writer = _fragmented(catalog, lake, trades, commits=30)
    other = TableWriter(open_catalog(lake), (lake.namespace, lake.trades_table), lake)
    offsets = '{"topic":{"0":123}}'

    def writer_commits() -> None:
        other.append(trades.slice(30 * ROWS, ROWS), snapshot_properties={"k2.kafka-offsets.g": offsets})

    table = writer.table
    result = compact(table, 10**9, min_files=5, before_commit=writer_commits)

    assert (result.attempts, result.conflicts, result.skipped) == (2, 1, None)
    table.refresh()
    got = _rows(table)
    expected = pa.Table.from_batches([trades.slice(0, 31 * ROWS)]).sort_by("message_id")
    assert got.equals(expected.cast(TRADE_ARROW_SCHEMA))
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary["k2.operation"] == "compact"
    assert snapshot.summary["k2.kafka-offsets.g"] == offsets  # the writer's, not the stale parent's
    assert table_offsets(table, "g") == {("topic", 0): 123}
    # The writer's file was not compacted (it came after the plan) and is still live.
    live = [path for files in _live_files(table).values() for path, _, _ in files]
    assert len(live) == result.files_added + 1


def test_compaction_whose_inputs_changed_commits_nothing(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _fragmented(catalog, lake, trades, commits=12)
    table = writer.table
    rival = open_catalog(lake).load_table((lake.namespace, lake.trades_table))

    result = compact(table, 10**9, min_files=5, before_commit=lambda: compact(rival, 10**9, min_files=5))

    assert result.snapshot_id is None
    assert result.skipped is not None and "changed underneath" in result.skipped
    table.refresh()
    # Only the rival's compaction landed; the loser's outputs were deleted, nothing is orphaned.
    assert len(table.metadata.snapshots) == 13
    assert files_on_disk(table)[2] == referenced_files(table)[2]
    assert _rows(table).num_rows == 12 * ROWS


def test_too_few_small_files_are_left_alone(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = _fragmented(catalog, lake, trades, commits=3)
    result = compact(writer.table, 10**9, min_files=5)
    assert (result.groups, result.snapshot_id) == (0, None)
    assert len(writer.table.metadata.snapshots) == 3


@pytest.mark.parametrize("merging", ["true", "false"])
def test_manifest_merge_leaves_the_table_properties_as_they_were(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch, merging: str
) -> None:
    writer = _fragmented(catalog, lake, trades, commits=4)
    table = writer.table
    with table.transaction() as tx:
        tx.set_properties({"commit.manifest-merge.enabled": merging})
    before = dict(table.metadata.properties)

    assert maintenance.merge_manifests(table) is not None

    assert dict(table.metadata.properties) == before
    assert maintenance.table_stats(table).manifests == 1
    assert files_on_disk(table) == referenced_files(table)
