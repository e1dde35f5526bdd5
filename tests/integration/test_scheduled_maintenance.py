"""The maintenance `k2 run` schedules (``scheduled_maintenance``, as ``run_pipeline`` wires it) runs
beside the pipeline's own commits: the table ends compacted, with every trade exactly once, and the
health metrics describe it.

Nothing here asserts how the maintenance commits and the writer's interleaved: whatever happened,
the outcome must be the same. The end state is reached deterministically by waiting (bounded) for a
maintenance run that started after the pipeline's last commit.
"""

from __future__ import annotations

import asyncio

import pytest

from k2.config import K2Settings, MaintenanceSettings
from k2.emulator.faults import Faults
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.metrics import REGISTRY
from k2.schema.kinds import RecordKind
from k2.services.maintain import k2_tables, scheduled_maintenance
from tests.conftest import eventually
from tests.integration.test_embedded_pipeline import _assert_table_is_exactly_the_recording, _replay

pytestmark = pytest.mark.integration


def test_k2_run_maintenance_compacts_beside_the_writer(settings: K2Settings) -> None:
    lake = settings.lake.model_copy(
        update={
            "flush_rows": 1_000,
            "flush_seconds": 0.05,
            "maintenance": MaintenanceSettings(interval_s=0.2, compact_min_files=2),
        }
    )
    settings = settings.model_copy(update={"lake": lake})

    with scheduled_maintenance(settings, k2_tables(settings)) as scheduler:
        pipeline, _ = asyncio.run(_replay(settings, Faults()))
        after_last_commit = scheduler.runs
        eventually(lambda: scheduler.runs >= after_last_commit + 2, timeout=120, interval=0.05)

    assert pipeline.stats.rows_committed == 34_419
    _assert_table_is_exactly_the_recording(settings)
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    files = [task.file for task in table.scan().plan_files()]
    assert len(files) == 2  # one per day: the recording crosses midnight, and 34,419 trades are far below 32 MiB
    labels = {"table": "market_data.trades"}
    assert REGISTRY.get_sample_value("k2_lake_data_files", labels) == 2
    assert REGISTRY.get_sample_value("k2_lake_partition_max_files", labels) == 1
    head = table.current_snapshot()
    assert head is not None and head.summary is not None
    assert int(head.summary["k2.platform-sequence.binance"]) >= 34_419  # the pipeline's state, carried forward
