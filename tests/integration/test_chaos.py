"""Chaos, embedded mode: a live feed (it moves on while K2 is down) with every fault the emulator can
inject, and `k2 run` (a real subprocess) killed with SIGKILL at several moments, one of them while a
large gap is being backfilled. Fixed seeds, bounded time. The table ends with exactly the recording,
once each; every quarantined frame is one the emulator made bad, with the reason it was made for;
`k2 quality` agrees with what was injected (docs/quality.md)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings
from k2.emulator.faults import MALFORMED_KINDS, Faults, replay_frames
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.quarantine import read_quarantine
from k2.schema.kinds import RecordKind
from tests.conftest import eventually
from tests.integration.test_completeness import TOTAL, _recording, _settings, _table_rows
from tests.integration.test_restart_state import _assert_each_trade_once, _stored_rows

pytestmark = pytest.mark.integration

BIG_GAP = (16_001, 2_500)  # withheld frames: a gap large enough to be killed in the middle of its backfill
FAULTS = Faults(
    duplicate_every=400,
    reorder_every=900,
    malformed_every=1_000,
    withhold=((4_001, 30), BIG_GAP, (27_001, 5)),
    disconnect_after=(7_000, 21_000),
    rest_errors=((503, 0.2), ("bad_body", 0.0), ("empty_page", 0.0), ("slow", 1.0), (429, 0.2)),
)
ENV = {
    "K2_QUALITY__GAP_GRACE_S": "1.0",
    "K2_QUALITY__REST_TIMEOUT_S": "0.5",
    "K2_QUALITY__BACKFILL_PAGE_LIMIT": "100",
    "K2_QUALITY__REST_WEIGHT_PER_MINUTE": "6000",  # 4 pages/s: the big gap's backfill takes seconds
    "K2_QUALITY__REST_WEIGHT_BURST": "50",
    "K2_SOURCE__RECONNECT_INITIAL_S": "0.05",
    "K2_SOURCE__RECONNECT_MAX_S": "0.2",
    "K2_LAKE__FLUSH_SECONDS": "0.2",
}


def _start(settings: K2Settings, tmp_path: Path, emu: EmulatorThread) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env |= ENV | {
        "K2_CONFIG_FILE": str(tmp_path / "no-such-k2.toml"),
        "K2_LAKE__WAREHOUSE": str(settings.lake.warehouse),
        "K2_SOURCE__EXCHANGE_INFO_CACHE": str(tmp_path / "xinfo.json"),
    }
    args = ["run", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", emu.url, "--rest-url", emu.emulator.http_url]
    with (tmp_path / "run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "k2.cli", *args, "--sample"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _gap_rows(settings: K2Settings) -> list[dict[str, Any]]:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.QUALITY_EVENTS)
    return [e for e in table.scan().to_arrow().to_pylist() if e["kind"] == "GAP"]


def _report(settings: K2Settings) -> list[dict[str, str]]:
    result = CliRunner().invoke(app, ["quality", "--warehouse", str(settings.lake.warehouse), "--format", "csv"])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def _settled(settings: K2Settings) -> bool:
    """Every trade stored and no gap left open or unrecoverable, as `k2 quality` reports it."""
    if _stored_rows(settings) < TOTAL:
        return False
    report = _report(settings)
    return sum(int(r["missing"]) for r in report) == 0 and all(
        r["gaps_open"] == r["gaps_unrecoverable"] == "0" for r in report
    )


def test_kill_9_of_k2_run_under_every_fault_with_the_feed_moving(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    rng = random.Random(20261201)
    recording = _recording()
    big = recording[BIG_GAP[0] - 1 : BIG_GAP[0] - 1 + BIG_GAP[1]]
    big_last = {s: max(d["t"] for d in big if d["s"] == s) for s in ("BTCUSDT", "ETHUSDT")}
    sent = TOTAL - sum(n for _, n in FAULTS.withhold)  # recorded frames the stream carries
    # The feed stops 1,000 frames before its end until the last `k2 run` is connected: a venue's feed
    # does not end, and trades missed at the very end would be followed by no id that reveals them.
    config = ReplayConfig(speed=20.0, live=True, faults=FAULTS, hold_at=sent - 1_000)
    kills = 0
    with EmulatorThread(config) as emu:
        server = emu.emulator

        def cursor() -> int:
            return server.replayed + server.missed

        proc = _start(settings, tmp_path, emu)
        try:
            # 1: mid-stream, early; 2: once the big gap is recorded OPEN (its backfill runs for seconds);
            # 3: mid-stream, late. The feed keeps moving while `k2 run` is down each time.
            first, last = rng.randint(2_000, 5_000), rng.randint(24_000, 28_000)
            moments = [
                lambda: cursor() >= first,
                lambda: any(g["status"] == "OPEN" and g["last_id"] in big_last.values() for g in _gap_rows(settings)),
                lambda: cursor() >= last,
            ]
            for moment in moments:
                eventually(lambda: proc.poll() is None and moment(), timeout=120, interval=0.05)  # noqa: B023
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kills += 1
                connections = server.connections
                proc = _start(settings, tmp_path, emu)
            eventually(lambda: proc.poll() is None and server.connections > connections, timeout=60)
            emu.release()
            eventually(lambda: emu.finished and _settled(settings), timeout=180, interval=0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        missed = server.missed
        injected = dict(server.injected)
    assert kills == 3 and missed > 0  # the feed moved on while `k2 run` was down

    rows = _table_rows(settings)
    _assert_each_trade_once(rows)
    withheld = {(d["s"], str(d["t"])) for start, n in FAULTS.withhold for d in recording[start - 1 : start - 1 + n]}
    backfilled = {(r["symbol"], r["trade_id"]) for r in rows if r["backfilled"] == "true"}
    assert withheld <= backfilled  # and what each kill and disconnect lost
    in_gaps = {(g["symbol"], str(i)) for g in _gap_rows(settings) for i in range(g["first_id"], g["last_id"] + 1)}
    assert backfilled <= in_gaps  # every backfilled row has its gap's record, whatever the kills hit

    # Every quarantined frame is one the emulator made bad, once, with the reason it was made for.
    made = {
        f.combined.decode(): f.kind
        for f in replay_frames(read_recording(BUNDLED_BINANCE_TRADES), FAULTS, {})
        if f.kind in MALFORMED_KINDS
    }
    quarantined = list(read_quarantine(settings.lake.quarantine_dir))
    assert quarantined and len({q["raw"] for q in quarantined}) == len(quarantined)
    assert all(made.get(q["raw"]) == q["reason"] for q in quarantined)

    # `k2 quality` agrees: every trade, nothing missing, every gap resolved; what the events say about
    # duplicates and reorders is at most what was injected (a kill between a flush's trades commit and
    # its events commit loses that flush's events, never its trades).
    report = _report(settings)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [r for r in report if r["symbol"] == symbol]
        total = {k: sum(int(r[k]) for r in mine) for k in ("trades", "missing", "backfilled_trades", "gaps_open")}
        assert total["trades"] == sum(1 for d in recording if d["s"] == symbol)
        assert total["missing"] == total["gaps_open"] == 0
        assert total["backfilled_trades"] == sum(1 for s, _ in backfilled if s == symbol)
    assert sum(int(r["gaps_unrecoverable"]) for r in report) == sum(int(r["resets"]) for r in report) == 0
    assert 0 < sum(int(r["duplicates_dropped"]) for r in report) <= injected["duplicate"]
    assert sum(int(r["out_of_order"]) for r in report) <= injected["reorder"]
    assert json.loads(json.dumps(injected))["withheld"] == sum(n for _, n in FAULTS.withhold)
