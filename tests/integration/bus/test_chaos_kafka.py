"""Chaos, Kafka path: the embedded chaos test's live feed and fault plan (tests/integration/test_chaos.py)
into `k2 ingest` (a real subprocess) killed with SIGKILL at several moments, one of them while a large
gap is being backfilled, with `k2 consume` (a real subprocess) running meanwhile and itself killed once.
Fixed seeds, bounded time. The topic and the table end with exactly the recording, once each; every
quarantined frame is one the emulator made bad, with the reason it was made for; `k2 quality` agrees
with what was injected."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest

from k2.bus.topics import topic_name
from k2.config import K2Settings
from k2.emulator.faults import MALFORMED_KINDS, replay_frames
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.lake.quarantine import read_quarantine
from k2.services.consume import run_consume
from tests.conftest import eventually
from tests.integration.bus.conftest import start_consumer, start_k2
from tests.integration.bus.test_completeness_kafka import _messages_in, _open_gaps, _settings
from tests.integration.test_chaos import BIG_GAP, ENV, FAULTS, _gap_rows, _report
from tests.integration.test_completeness import TOTAL, _recording, _table_rows
from tests.integration.test_restart_state import _assert_each_trade_once

pytestmark = pytest.mark.integration


def _start_ingest(settings: K2Settings, tmp_path: Path, emu: EmulatorThread) -> subprocess.Popen[bytes]:
    args = ["ingest", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", emu.url, "--rest-url", emu.emulator.http_url]
    env = ENV | {"K2_SOURCE__EXCHANGE_INFO_CACHE": str(tmp_path / "xinfo.json")}
    return start_k2(settings, tmp_path, "ingest", *args, "--sample", env=env)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_kill_9_of_k2_ingest_under_every_fault_with_the_feed_moving(bus_settings: K2Settings, tmp_path: Path) -> None:
    settings = _settings(bus_settings, tmp_path)
    topic = topic_name(settings.kafka.asset_class, "trades", "binance")
    rng = random.Random(20261202)
    recording = _recording()
    big = recording[BIG_GAP[0] - 1 : BIG_GAP[0] - 1 + BIG_GAP[1]]
    big_last = {(s, max(d["t"] for d in big if d["s"] == s)) for s in ("BTCUSDT", "ETHUSDT")}
    sent = TOTAL - sum(n for _, n in FAULTS.withhold)
    config = ReplayConfig(speed=20.0, live=True, faults=FAULTS, hold_at=sent - 1_000)  # see test_chaos
    kills = 0
    with EmulatorThread(config) as emu:
        server = emu.emulator

        def cursor() -> int:
            return server.replayed + server.missed

        def big_gap_open() -> bool:
            return any((g.key.symbol, g.last_id) in big_last for g in _open_gaps(settings))

        proc = _start_ingest(settings, tmp_path, emu)
        consumer = start_consumer(settings, tmp_path, "consume")
        try:
            first, last = rng.randint(2_000, 5_000), rng.randint(24_000, 28_000)
            moments = [lambda: cursor() >= first, big_gap_open, lambda: cursor() >= last]
            for i, moment in enumerate(moments):
                eventually(lambda: proc.poll() is None and moment(), timeout=120, interval=0.05)  # noqa: B023
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kills += 1
                if i == 1:  # the consumer too, once, mid-stream: its offsets live in the table's commits
                    consumer.send_signal(signal.SIGKILL)
                    consumer.wait(timeout=10)
                    consumer = start_consumer(settings, tmp_path, "consume")
                connections = server.connections
                proc = _start_ingest(settings, tmp_path, emu)
            eventually(lambda: proc.poll() is None and server.connections > connections, timeout=60)
            emu.release()

            def settled() -> bool:  # every trade sent, and every gap recorded OPEN has its final status
                assert proc.poll() is None, (tmp_path / "ingest.log").read_text()[-3000:]
                return emu.finished and _messages_in(settings, topic) >= TOTAL and not _open_gaps(settings)

            eventually(settled, timeout=240, interval=0.5)
            _stop(proc, tmp_path / "ingest.log")
            _stop(consumer, tmp_path / "consume.log")
        finally:
            for p in (proc, consumer):
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        missed = server.missed
        injected = dict(server.injected)
    assert kills == 3 and missed > 0  # the feed moved on while `k2 ingest` was down
    assert _messages_in(settings, topic) == TOTAL  # the topic itself: every trade once

    run_consume(settings, idle_exit_s=2.0, duration_s=120)  # whatever the killed consumer left
    rows = _table_rows(settings)
    _assert_each_trade_once(rows)
    withheld = {(d["s"], str(d["t"])) for start, n in FAULTS.withhold for d in recording[start - 1 : start - 1 + n]}
    backfilled = {(r["symbol"], r["trade_id"]) for r in rows if r["backfilled"] == "true"}
    assert withheld <= backfilled
    in_gaps = {(g["symbol"], str(i)) for g in _gap_rows(settings) for i in range(g["first_id"], g["last_id"] + 1)}
    assert backfilled <= in_gaps

    made = {
        f.combined.decode(): f.kind
        for f in replay_frames(read_recording(BUNDLED_BINANCE_TRADES), FAULTS, {})
        if f.kind in MALFORMED_KINDS
    }
    quarantined = list(read_quarantine(settings.lake.quarantine_dir))
    assert quarantined and len({q["raw"] for q in quarantined}) == len(quarantined)
    assert all(made.get(q["raw"]) == q["reason"] for q in quarantined)

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
