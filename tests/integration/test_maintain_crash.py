"""`k2 maintain` killed with SIGKILL mid-rewrite (compacted files written, commit not made) leaves the
table readable and exact; the next run sweeps the files the killed one left behind.

"Mid-rewrite" is deterministic: the hidden ``--pause-before-commit FILE`` option makes the process
create FILE once every compacted file is written and wait before committing; the test waits for
FILE, then kills the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.conftest import eventually
from tests.unit.lake.files import files_on_disk, referenced_files

pytestmark = pytest.mark.integration

COMMITS, ROWS = 36, 600  # 21,600 of the bundled trades: midnight is at row 15,836, so two day partitions


def _rows(settings: K2Settings) -> pa.Table:
    lake = settings.lake
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    return table.scan().to_arrow().cast(TRADE_ARROW_SCHEMA).sort_by("message_id")


def test_kill_9_mid_rewrite_leaves_the_table_exact_and_the_next_run_sweeps(
    settings: K2Settings, tmp_path: Path, bundled_frames: list[RawFrame]
) -> None:
    trades = parse_canonical(
        "binance", bundled_frames, symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    )
    recording_trades = trades.records[RecordKind.TRADES]
    lake = settings.lake
    catalog = open_catalog(lake)
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(COMMITS):
        writer.append(recording_trades.slice(i * ROWS, ROWS), snapshot_properties={"k2.platform-sequence": str(i)})
    expected = _rows(settings)
    assert expected.num_rows == COMMITS * ROWS
    table = writer.table
    snapshots_before = {s.snapshot_id for s in table.metadata.snapshots}
    assert files_on_disk(table) == referenced_files(table)

    marker = tmp_path / "compaction-written"
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env["K2_CONFIG_FILE"] = str(tmp_path / "no-such-k2.toml")
    args = ["maintain", "--warehouse", str(lake.warehouse), "--table", "trades", "--pause-before-commit", str(marker)]
    with (tmp_path / "maintain.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "k2.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: marker.exists() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, (tmp_path / "maintain.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Readable and exact: the same snapshots, the same rows; the killed run's outputs are orphans.
    table.refresh()
    assert {s.snapshot_id for s in table.metadata.snapshots} == snapshots_before
    assert _rows(settings).equals(expected)
    on_disk, referenced = files_on_disk(table), referenced_files(table)
    orphans = on_disk[2] - referenced[2]
    assert len(orphans) == 2  # one compacted file per day partition (the rows cross midnight)
    assert on_disk[:2] == referenced[:2]

    result = CliRunner().invoke(
        app, ["maintain", "--warehouse", str(lake.warehouse), "--table", "trades", "--orphan-min-age", "0"]
    )

    assert result.exit_code == 0, result.output
    assert "market_data.trades" in result.output
    table.refresh()
    assert _rows(settings).equals(expected)
    on_disk, referenced = files_on_disk(table), referenced_files(table)
    assert on_disk == referenced
    assert not orphans & on_disk[2]
    assert len([t for t in table.scan().plan_files()]) == 2  # compacted this time
    head = table.current_snapshot()
    assert head is not None and head.summary is not None
    assert (head.summary["k2.operation"], head.summary["k2.platform-sequence"]) == ("compact", str(COMMITS - 1))
