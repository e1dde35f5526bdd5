"""Compaction while `k2 consume` commits (real Kafka, the consumer a real subprocess): no row lost or
duplicated, the consumer's offsets intact, and a restarted consumer resumes from them.

The concurrent commit is forced, not hoped for: compaction's ``before_commit`` hook (after it read
and rewrote the small files, before it commits) produces more messages and waits until the running
consumer has committed them. The compaction's commit is then built on a stale head, fails, and is
rebuilt on top of the consumer's snapshot.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pyarrow as pa
import pytest

from k2.bus.offsets import table_offsets
from k2.config import K2Settings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.compaction import compact
from k2.schema.kinds import RecordKind
from tests.conftest import eventually
from tests.integration.bus.conftest import assert_exactly, high_watermarks, produce, start_consumer

pytestmark = [pytest.mark.integration, pytest.mark.services]

FIRST = 20_000


def _offsets(settings: K2Settings) -> dict[int, int]:
    lake = settings.lake
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    return {p: o for (_, p), o in table_offsets(table, settings.kafka.consumer_group).items()}


def _consumed_up_to(settings: K2Settings, topic: str) -> bool:
    ends = {p: o for p, o in high_watermarks(settings, topic).items() if o > 0}
    assert _offsets(settings) == ends
    return True


def test_compaction_during_consume_keeps_every_row_once_and_the_offsets(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch, tmp_path: Path
) -> None:
    settings = bus_settings.model_copy(
        update={"lake": bus_settings.lake.model_copy(update={"flush_rows": 1_000, "flush_seconds": 0.2})}
    )
    topic = produce(settings, recording_batch.slice(0, FIRST))
    consumer = start_consumer(settings, tmp_path, "consume", "--duration", "300")
    try:
        eventually(lambda: _consumed_up_to(settings, topic), timeout=120, interval=0.1)
        lake = settings.lake
        table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
        small = {task.file.file_path for task in table.scan().plan_files()}
        assert len(small) >= 10  # many small commits

        def consumer_commits() -> None:
            produce(settings, recording_batch.slice(FIRST))
            eventually(lambda: _consumed_up_to(settings, topic), timeout=120, interval=0.1)

        result = compact(table, 10**9, min_files=5, before_commit=consumer_commits)

        assert result.snapshot_id is not None, result.skipped
        assert result.conflicts >= 1  # forced by the hook: the consumer committed after the compaction read
        table.refresh()
        live = {task.file.file_path for task in table.scan().plan_files()}
        assert result.files_removed >= 5 and len(small & live) == len(small) - result.files_removed
        assert len(live) > result.files_added  # the consumer's new files too
        head = table.current_snapshot()
        assert head is not None and head.summary is not None
        assert head.summary["k2.operation"] == "compact"
        ends = {p: o for p, o in high_watermarks(settings, topic).items() if o > 0}
        assert _offsets(settings) == ends  # carried forward onto the compaction snapshot
        assert sum(ends.values()) == recording_batch.num_rows
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(60) == 0, (tmp_path / "consume.log").read_text()[-3000:]

    assert_exactly(settings, recording_batch)
    # A restarted consumer finds its offsets in the table and consumes nothing twice.
    again = start_consumer(settings, tmp_path, "again", "--idle-exit", "3", "--duration", "90")
    assert again.wait(120) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert_exactly(settings, recording_batch)
    assert _offsets(settings) == ends
