"""Restart state in embedded mode is exact per (venue, symbol, stream): whatever other symbols did
and whatever any stored row says (docs/quality.md, "Restarts"). Real emulator, real `k2 run`
subprocess killed with SIGKILL, real Iceberg warehouse."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.emulator.faults import Faults
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.conftest import eventually
from tests.integration.test_completeness import TOTAL, _events, _recording, _run, _settings, _table_rows

pytestmark = pytest.mark.integration


def _assert_each_trade_once(rows: list[dict[str, Any]]) -> None:
    """The table holds every recorded trade exactly once, with its recorded values."""
    expected = {(d["s"], str(d["t"])): d for d in _recording()}
    keys = Counter((r["symbol"], r["trade_id"]) for r in rows)
    duplicates = sum(n - 1 for n in keys.values())
    assert duplicates == 0, f"{duplicates} duplicate rows"
    assert set(keys) == set(expected) and len(rows) == TOTAL
    for r in rows:
        d = expected[(r["symbol"], r["trade_id"])]
        assert (r["price"], r["quantity"]) == (Decimal(d["p"]), Decimal(d["q"]))


def _stored_rows(settings: K2Settings) -> int:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.TRADES)
    snapshot = table.current_snapshot()
    return 0 if snapshot is None or snapshot.summary is None else int(snapshot.summary["total-records"] or 0)


def run_env(settings: K2Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `k2 run` subprocess: no K2_ variable of the caller, no config file, the
    settings' warehouse, quick flushes, gap grace and reconnects, the exchange-info cache in ``tmp_path``;
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    return env | {
        "K2_CONFIG_FILE": str(tmp_path / "no-such-k2.toml"),
        "K2_LAKE__WAREHOUSE": str(settings.lake.warehouse),
        "K2_LAKE__FLUSH_SECONDS": "0.2",
        "K2_QUALITY__GAP_GRACE_S": "1.0",
        "K2_SOURCE__EXCHANGE_INFO_CACHE": str(tmp_path / "xinfo.json"),
        "K2_SOURCE__RECONNECT_INITIAL_S": "0.05",
        "K2_SOURCE__RECONNECT_MAX_S": "0.2",
        **extra,
    }


def _start_run(settings: K2Settings, tmp_path: Path, emu: EmulatorThread) -> subprocess.Popen[bytes]:
    """`k2 run` against the emulator, as a subprocess (logging to run.log)."""
    env = run_env(settings, tmp_path)
    args = ["run", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", emu.url, "--rest-url", emu.emulator.http_url]
    with (tmp_path / "run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "k2.cli", *args, "--sample"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _far_future_copy(frame: RawFrame) -> pa.RecordBatch:
    """The row of a real frame with its trade time moved to 2200 (what 4af7975 could store)."""
    batch = parse_canonical(
        "binance", [frame], symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]
    i = batch.schema.get_field_index("timestamp")
    year_2200 = pa.array([datetime(2200, 1, 1, tzinfo=UTC)], batch.schema.field(i).type)
    return batch.set_column(i, batch.schema.field(i), year_2200)


def test_a_stored_far_future_row_and_a_kill_9_write_no_duplicate(
    tmp_path: Path, bundled_frames: list[RawFrame]
) -> None:
    """A table holds frames 1..10,000 and one row stamped 2200 (the next BTCUSDT trade, stored with
    a broken time by an older K2). `k2 run` restarts on it, replays the recording from frame 1 and
    is SIGKILLed mid-stream; a last run replays everything. Seeding from a time window ending at
    the newest row found only that row: ETHUSDT had no state (8,359 rows written twice on 4af7975)."""
    settings = _settings(tmp_path)
    asyncio.run(_run(settings, Faults(withhold=((10_001, TOTAL),))))
    next_btc = next(f for f in bundled_frames[10_000:] if b"btcusdt@trade" in f.payload)
    lake = settings.lake
    TableWriter(open_catalog(lake), (lake.namespace, lake.trades_table), lake).append(_far_future_copy(next_btc))
    assert _stored_rows(settings) == 10_001

    with EmulatorThread(ReplayConfig(speed=40.0)) as emu:
        proc = _start_run(settings, tmp_path, emu)
        try:
            eventually(lambda: proc.poll() is None and _stored_rows(settings) >= 14_000, timeout=120, interval=0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert _stored_rows(settings) < TOTAL, "killed mid-stream"

    pipeline, _ = asyncio.run(_run(settings, Faults()))
    _assert_each_trade_once(_table_rows(settings))
    assert pipeline.get_stats()["quality"]["gaps_detected"] == 0  # everything came again live


def _only(settings: K2Settings, *symbols: str) -> K2Settings:
    return settings.model_copy(update={"source": settings.source.model_copy(update={"symbols": symbols})})


def test_a_symbol_quiet_while_another_trades_keeps_its_state(tmp_path: Path) -> None:
    """Run 1 takes frames 1..10,000 of both symbols; run 2 only BTCUSDT's, frames 10,001..25,000
    (ETHUSDT quiet for ~5 minutes of exchange time while BTCUSDT trades); run 3 both symbols from
    frame 25,001. ETHUSDT's state from before its silence must find its restart gap (frames
    10,001..25,000), and a last full replay must write nothing. With a seed from a time window,
    ETHUSDT had no state once its silence exceeded the window: the gap was lost without a record."""
    settings = _settings(tmp_path)
    asyncio.run(_run(settings, Faults(withhold=((10_001, TOTAL),))))
    asyncio.run(_run(_only(settings, "BTCUSDT"), Faults(withhold=((1, 10_000), (25_001, TOTAL)))))
    recording = _recording()
    quiet = {(d["s"], str(d["t"])) for d in recording[10_000:25_000] if d["s"] == "ETHUSDT"}
    assert len(_table_rows(settings)) == 10_000 + 25_000 - 10_000 - len(quiet)

    asyncio.run(_run(settings, Faults(withhold=((1, 25_000),))))
    rows = _table_rows(settings)
    _assert_each_trade_once(rows)
    assert {(r["symbol"], r["trade_id"]) for r in rows if r["backfilled"] == "true"} == quiet
    ids = sorted(int(t) for _, t in quiet)
    gaps = [(e["symbol"], e["first_id"], e["last_id"], e["status"]) for e in _events(settings) if e["kind"] == "GAP"]
    assert gaps == [("ETHUSDT", ids[0], ids[-1], "OPEN"), ("ETHUSDT", ids[0], ids[-1], "RESOLVED")]

    pipeline, _ = asyncio.run(_run(settings, Faults()))
    assert pipeline.get_stats()["quality"]["duplicates_dropped"] == TOTAL
    assert pipeline.stats.rows_committed == 0
