"""`k2 maintain` and the maintenance `k2 run` schedules cover every table K2 writes: the quotes table
too (it was left out: small quote files piled up for ever), and a kind not written yet is skipped
quietly rather than reported as a failure every interval."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from k2.config import K2Settings, MaintenanceSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.metrics import REGISTRY
from k2.schema.kinds import RecordKind
from k2.services.maintain import k2_tables, run_maintain, scheduled_maintenance
from k2.sources.base import RawFrame
from tests.conftest import eventually


@pytest.fixture(scope="module")
def quotes() -> pa.RecordBatch:
    recorded = itertools.islice(read_recording(BUNDLED_BINANCE_SESSION), 4_000)
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in recorded]
    parsed = parse_canonical("binance", frames, symbols=["BTCUSDT", "ETHUSDT"], kinds=(RecordKind.QUOTES,))
    return parsed.records[RecordKind.QUOTES]


def _small_quote_files(settings: K2Settings, quotes: pa.RecordBatch, files: int) -> None:
    lake = settings.lake
    catalog = open_catalog(lake)
    load_or_create_table(catalog, lake, RecordKind.QUOTES)
    writer = TableWriter(catalog, (lake.namespace, lake.quotes_table), lake)
    rows = quotes.num_rows // files
    for i in range(files):
        writer.append(quotes.slice(i * rows, rows))


def test_the_tables_k2_writes_are_every_kind_and_the_events(settings: K2Settings) -> None:
    assert k2_tables(settings) == ["trades", "quotes", "quality_events"]


def test_k2_maintain_compacts_the_quotes_table(settings: K2Settings, quotes: pa.RecordBatch) -> None:
    _small_quote_files(settings, quotes, 6)

    reports = run_maintain(settings)  # default: K2's tables that exist

    assert [r.table for r in reports] == ["market_data.quotes"]
    (report,) = reports
    assert report.errors == {}
    assert report.before.data_files >= 6
    assert report.after is not None and report.after.data_files < report.before.data_files
    assert report.after.records == report.before.records


def test_scheduled_maintenance_compacts_quotes_and_skips_tables_not_written(
    settings: K2Settings, quotes: pa.RecordBatch
) -> None:
    lake = settings.lake.model_copy(update={"maintenance": MaintenanceSettings(interval_s=0.1, compact_min_files=2)})
    settings = settings.model_copy(update={"lake": lake})
    _small_quote_files(settings, quotes, 6)
    failures = REGISTRY.get_sample_value(
        "k2_lake_maintenance_failures_total", {"table": "market_data.quotes", "operation": "compact"}
    )

    with scheduled_maintenance(settings, k2_tables(settings)) as scheduler:
        eventually(lambda: scheduler.runs >= 2, timeout=60, interval=0.05)

    assert REGISTRY.get_sample_value("k2_lake_partition_max_files", {"table": "market_data.quotes"}) == 1
    assert (
        REGISTRY.get_sample_value(
            "k2_lake_maintenance_failures_total", {"table": "market_data.quotes", "operation": "compact"}
        )
        == failures
    )
    catalog = open_catalog(lake)
    assert not catalog.table_exists((lake.namespace, lake.trades_table))  # skipped, not created
    assert not catalog.table_exists((lake.namespace, lake.events_table))
