"""A reader holding a snapshot while maintenance compacts and expires it either completes with the
exact answer or gets a clear error (SnapshotExpired, a K2Error with a message): never wrong rows.

The reader "holds" the snapshot deterministically: the engine plans (and caches the plan of) the
pre-compaction snapshot and does not refresh by itself (``refresh_interval_s=None``); compaction and
expiry then run before it reads.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.errors import K2Error, SnapshotExpired
from k2.lake import maintenance
from k2.lake.catalog import load_or_create_table
from k2.lake.compaction import compact
from k2.lake.writer import TableWriter
from k2.query import QueryEngine
from k2.query.planner import Planner, ScanFilter
from k2.schema.kinds import RecordKind
from tests.unit.query import reference as ref

COMMITS, ROWS = 20, 500


def _fragmented(catalog: Catalog, lake: LakeSettings, recording: pa.Table) -> TableWriter:
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(COMMITS):
        writer.append(recording.slice(i * ROWS, ROWS).to_batches())
    return writer


def _answers(engine: QueryEngine) -> tuple[object, ...]:
    return (
        engine.sql("SELECT count(*) AS n, count(DISTINCT message_id) AS ids FROM trades").to_pylist(),
        engine.ohlcv("BTCUSDT", "1m").to_pylist(),
        engine.vwap("ETHUSDT"),
    )


def _expected(recording: pa.Table) -> tuple[object, ...]:
    rows = recording.slice(0, COMMITS * ROWS)
    n = COMMITS * ROWS
    return (
        [{"n": n, "ids": n}],
        ref.ohlcv(ref.rows(rows, "BTCUSDT"), timedelta(minutes=1)),
        ref.vwap(ref.rows(rows, "ETHUSDT")),
    )


def test_a_reader_of_the_replaced_snapshot_completes_within_the_grace(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    writer = _fragmented(catalog, lake, recording)
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        held = engine.plan()
        assert len(held.files) == COMMITS  # one small file per commit (all on 2024-08-08)

        compact(writer.table, 10**9, min_files=5)
        maintenance.expire_snapshots(writer.table, keep=1, grace_s=600)

        # The engine still reads the old snapshot: its small files are kept for the grace.
        assert engine.plan().snapshot_id == held.snapshot_id
        assert all(os.path.exists(path) for path in held.files)
        assert _answers(engine) == _expected(recording)
        engine.refresh()
        assert len(engine.plan().files) == 1  # the compacted table
        assert _answers(engine) == _expected(recording)


def test_a_reader_whose_files_were_expired_answers_from_the_current_snapshot(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    writer = _fragmented(catalog, lake, recording)
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        held = engine.plan()

        compact(writer.table, 10**9, min_files=5)
        maintenance.expire_snapshots(writer.table, keep=1, grace_s=0)  # no grace: the old files go now

        assert not any(os.path.exists(path) for path in held.files)
        assert _answers(engine) == _expected(recording)  # read failed, refreshed, read the compacted files
        assert engine.plan().snapshot_id != held.snapshot_id


def test_planning_an_expired_snapshot_is_a_clear_error(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    writer = _fragmented(catalog, lake, recording)
    held = catalog.load_table((lake.namespace, lake.trades_table))  # a reader that loaded the table earlier
    snapshot = held.current_snapshot()
    assert snapshot is not None

    compact(writer.table, 10**9, min_files=5)
    maintenance.expire_snapshots(writer.table, keep=1, grace_s=0)

    with pytest.raises(SnapshotExpired, match=f"snapshot {snapshot.snapshot_id} of market_data.trades was expired"):
        Planner(held).plan(ScanFilter(symbol="BTCUSDT"))
    assert issubclass(SnapshotExpired, K2Error) and SnapshotExpired.retryable
