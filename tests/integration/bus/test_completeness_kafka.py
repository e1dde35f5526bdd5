"""Completeness on the Kafka path: emulator faults -> `k2 ingest` (sequence tracking, dedup, REST
backfill) -> Kafka (trades and quality-events topics) -> `k2 consume` (both streams) -> Iceberg.

The same expectations as the embedded acceptance tests (tests/integration/test_completeness.py),
computed independently from the recording and the fault plan: the trades table holds exactly the
recording, the gap records and the quality report show what was injected, and a restart of
`k2 ingest` finds its restart gap from the topic's own newest messages.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder
from k2.bus.tail import read_tail
from k2.bus.topics import quality_events_topic, topic_name
from k2.config import K2Settings, QualitySettings
from k2.emulator.faults import Faults
from k2.emulator.server import BinanceEmulator, EmulatorThread, ReplayConfig
from k2.quality.records import open_gaps
from k2.quality.sequence import Gap
from k2.schema import TRADE
from k2.schema.quality_event import QUALITY_EVENT
from k2.services.consume import run_consume
from k2.services.ingest import IngestService
from k2.services.quality_report import quality_report_dicts
from tests.conftest import eventually
from tests.integration.bus.conftest import high_watermarks, start_k2
from tests.integration.test_completeness import (
    FAULT_PLAN,
    TOTAL,
    _assert_exactly_the_recording,
    _events,
    _expected_faults,
    _recording,
    _table_rows,
    assert_restart_gap_resolved,
    run_settled,
    withheld_trades,
)

pytestmark = pytest.mark.integration


def _settings(bus_settings: K2Settings, tmp_path: Path, **quality: Any) -> K2Settings:
    source = bus_settings.source.model_copy(update={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2})
    return bus_settings.model_copy(
        update={
            "source": source,
            "quality": QualitySettings(**{"gap_grace_s": 1.0, "rest_weight_per_minute": 60_000, **quality}),
        }
    )


async def _ingest(
    settings: K2Settings, faults: Faults, speed: float | None = None
) -> tuple[IngestService, BinanceEmulator]:
    def make(s: K2Settings, ws_url: str) -> IngestService:
        return IngestService(s, ws_base_url=ws_url, is_sample_data=True)

    service, emu = await run_settled(make, settings, faults, speed)
    assert service.producer.stats.failed == service.events_producer.stats.failed == 0
    return service, emu


def _consume(settings: K2Settings) -> None:
    run_consume(settings, idle_exit_s=2.0, duration_s=120)


def test_faults_are_repaired_through_kafka(bus_settings: K2Settings, tmp_path: Path) -> None:
    faults = FAULT_PLAN
    settings = _settings(bus_settings, tmp_path, backfill_page_limit=500)
    service, emu = asyncio.run(_ingest(settings, faults))
    _consume(settings)

    recording = _recording()
    withheld = withheld_trades(recording)
    assert emu.injected["withheld"] == len(withheld) == 1_543
    assert emu.injected["disconnect"] == 2
    # Duplicates never reached the topic: what was produced is the recording, once.
    assert service.producer.stats.delivered == TOTAL
    assert service.stats.backfilled == 1_543
    _assert_exactly_the_recording(_table_rows(settings), withheld)

    want = _expected_faults(faults)
    stats = service.get_stats()["quality"]
    assert stats["duplicates_dropped"] == emu.injected["duplicate"] == sum(c["duplicates"] for c in want.values())
    assert stats["out_of_order"] == sum(c["out_of_order"] for c in want.values())
    assert stats["gaps_detected"] == stats["gaps_resolved"] == sum(c["gaps"] for c in want.values()) == 5

    # The quality-events topic reached the events table: each gap OPEN, then RESOLVED.
    gaps = [e for e in _events(settings) if e["kind"] == "GAP"]
    by_id: dict[str, list[str]] = {}
    for e in gaps:
        by_id.setdefault(e["event_id"], []).append(e["status"])
    assert len(by_id) == 5 and all(s == ["OPEN", "RESOLVED"] for s in by_id.values())
    resolved = [e for e in gaps if e["status"] == "RESOLVED"]
    recovered = {(e["symbol"], str(i)) for e in resolved for i in range(e["first_id"], e["last_id"] + 1)}
    assert recovered == withheld

    report = quality_report_dicts(settings)
    for symbol, c in want.items():
        rows = [r for r in report if r["symbol"] == symbol]
        total = {k: sum(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], int)}
        assert total["trades"] == sum(1 for d in recording if d["s"] == symbol)
        assert total["missing"] == total["gaps_open"] == total["gaps_unrecoverable"] == 0
        assert total["gaps_found"] == total["gaps_backfilled"] == c["gaps"]
        assert total["duplicates_dropped"] == c["duplicates"]
        assert total["out_of_order"] == c["out_of_order"]


def test_ingest_restart_gap_is_found_from_the_topic_and_replays_are_dropped(
    bus_settings: K2Settings, tmp_path: Path
) -> None:
    """Run 1 stops after frame 10,000; the feed moves on while `k2 ingest` is down; run 2 sees frame
    15,001 on. Nothing was consumed yet, so only the topic knows what run 1 sent. Run 3 replays the
    whole recording: every trade is already in the topic and is dropped."""
    settings = _settings(bus_settings, tmp_path)
    first, _ = asyncio.run(_ingest(settings, Faults(withhold=((10_001, TOTAL),))))
    assert first.producer.stats.delivered == 10_000

    second, _ = asyncio.run(_ingest(settings, Faults(withhold=((1, 15_000),))))
    recording = _recording()
    down = {(d["s"], str(d["t"])) for d in recording[10_000:15_000]}
    assert second.stats.backfilled == len(down) == 5_000
    assert second.get_stats()["quality"]["duplicates_dropped"] == 0

    third, _ = asyncio.run(_ingest(settings, Faults()))
    assert third.stats.trades == third.stats.backfilled == third.producer.stats.delivered == 0
    assert third.get_stats()["quality"]["duplicates_dropped"] == TOTAL

    _consume(settings)
    _assert_exactly_the_recording(_table_rows(settings), down)
    assert_restart_gap_resolved(settings, down)


def _messages_in(settings: K2Settings, topic: str) -> int:
    """Messages in ``topic`` (nothing is ever deleted here)."""
    return sum(high_watermarks(settings, topic).values())


def _open_gaps(settings: K2Settings) -> list[Gap]:
    """Gaps whose newest row in the quality-events topic is OPEN."""
    topic = quality_events_topic(settings.kafka.asset_class, "binance")
    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    try:
        decoder = AvroDecoder(QUALITY_EVENT, registry.fetch)
        return open_gaps(read_tail(settings.kafka.bootstrap_servers, topic, decoder, max_messages=10**6).rows)
    finally:
        registry.close()


def _start_ingest(settings: K2Settings, tmp_path: Path, emu: EmulatorThread) -> subprocess.Popen[bytes]:
    args = ["ingest", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", emu.url, "--rest-url", emu.emulator.http_url]
    return start_k2(settings, tmp_path, "ingest", *args, "--sample", env={"K2_QUALITY__GAP_GRACE_S": "1.0"})


def test_ingest_killed_with_sigkill_resumes_without_loss_or_duplicates(
    bus_settings: K2Settings, tmp_path: Path
) -> None:
    """`k2 ingest` (a real subprocess) is SIGKILLed twice while the emulator streams at 40x: whatever it
    had received or queued but Kafka had not acknowledged is lost with it. The emulator waits for a
    subscriber, so the restarted process sees the feed go on from there: its restart gap (the lost
    trades) is found from the topic and backfilled. The topic ends with every trade exactly once."""
    settings = _settings(bus_settings, tmp_path)
    topic = topic_name(settings.kafka.asset_class, "trades", "binance")
    rng = random.Random(20241126)
    with EmulatorThread(ReplayConfig(speed=40.0)) as emu:
        proc = _start_ingest(settings, tmp_path, emu)
        try:
            for low, high in ((3_000, 9_000), (14_000, 22_000)):
                target = rng.randint(low, high)
                eventually(lambda: proc.poll() is None and _messages_in(settings, topic) >= target, timeout=90)  # noqa: B023
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                proc = _start_ingest(settings, tmp_path, emu)

            def settled() -> bool:  # every trade sent, and every gap recorded OPEN has its final status
                assert proc.poll() is None, (tmp_path / "ingest.log").read_text()[-3000:]
                return emu.finished and _messages_in(settings, topic) >= TOTAL and not _open_gaps(settings)

            eventually(settled, timeout=120, interval=0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert _messages_in(settings, topic) == TOTAL

    _consume(settings)
    rows = _table_rows(settings)
    expected = {(d["s"], str(d["t"])) for d in _recording()}
    keys = [(r["symbol"], r["trade_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == TOTAL and set(keys) == expected
    # What a kill lost (received or queued, never acknowledged; how much is left to chance) came back
    # over REST, as restart gaps found from the topic. A gap whose backfill a kill cut short is found
    # again (same event id, from its last id): every gap ends RESOLVED, and every backfilled row lies
    # in a recorded gap.
    latest: dict[str, str] = {}
    in_gaps: set[tuple[str, str]] = set()
    for e in sorted(_events(settings), key=lambda e: e["status_at"]):
        if e["kind"] == "GAP":
            latest[e["event_id"]] = e["status"]
            in_gaps |= {(e["symbol"], str(i)) for i in range(e["first_id"], e["last_id"] + 1)}
    assert set(latest.values()) <= {"RESOLVED"}
    assert {(r["symbol"], r["trade_id"]) for r in rows if r["backfilled"] == "true"} <= in_gaps


def test_a_seed_window_that_starts_with_backfilled_rows_opens_no_false_gap(
    bus_settings: K2Settings, tmp_path: Path
) -> None:
    """Run 1 streams at 40x with 100 frames withheld early on: their backfill is written to the topic
    while the live stream goes on. Run 2 seeds from a window that begins exactly at the first
    backfilled BTCUSDT row, so the live rows written between the gap and its backfill are outside
    it; they were sent, and must not be taken for a gap (fetching them again would duplicate them).
    Run 2 replays the whole recording: everything is a duplicate, nothing is fetched or sent."""
    settings = _settings(bus_settings, tmp_path)
    first, _ = asyncio.run(_ingest(settings, Faults(withhold=((5_001, 100),)), speed=40.0))
    assert first.stats.backfilled == 100

    topic = topic_name(settings.kafka.asset_class, "trades", "binance")
    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    everything = read_tail(
        settings.kafka.bootstrap_servers, topic, AvroDecoder(TRADE, registry.fetch), max_messages=10**9
    )
    registry.close()
    rows = everything.rows
    backfilled = pc.map_lookup(rows["vendor_data"], pa.scalar("backfilled"), "first").to_pylist()
    btc = [i for i, (s, b) in enumerate(zip(rows["symbol"].to_pylist(), backfilled, strict=True)) if s == "BTCUSDT"]
    first_backfilled = min((i for i in btc if backfilled[i] == "true"), key=lambda i: everything.offsets[i])
    partition = int(everything.partitions[first_backfilled])
    high = int(everything.offsets[everything.partitions == partition].max()) + 1
    later_live = [
        i for i in btc if backfilled[i] != "true" and everything.offsets[i] > everything.offsets[first_backfilled]
    ]
    window = high - int(everything.offsets[first_backfilled])
    assert later_live and window < high  # the window starts at the backfill, after earlier live rows

    narrow = settings.model_copy(update={"quality": settings.quality.model_copy(update={"seed_messages": window})})
    second, emu = asyncio.run(_ingest(narrow, Faults()))
    assert second.producer.stats.delivered == second.stats.backfilled == 0
    assert second.get_stats()["quality"]["duplicates_dropped"] == TOTAL
    assert second.get_stats()["quality"]["gaps_detected"] == 0
    assert emu.rest.requests == []


def test_a_symbol_quiet_beyond_the_seed_window_is_found_further_back(bus_settings: K2Settings, tmp_path: Path) -> None:
    """One partition and a 1,000-message seed window. Run 1 sends frames 1..10,000 of both symbols;
    run 2 only BTCUSDT's 10,001..25,000 (about 8,500 messages: ETHUSDT's last ones are far outside
    the window); run 3 both symbols from frame 25,001. `k2 ingest` reads its topic further back until
    ETHUSDT's position is known, so ETHUSDT's restart gap (its trades of frames 10,001..25,000) is
    found and backfilled; run 4 replays everything and sends nothing. With the fixed window, ETHUSDT
    had no state: its gap was lost without a record (and a replay was sent again)."""
    base = _settings(bus_settings, tmp_path, seed_messages=1_000)
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"partitions": 1})})
    btc_only = settings.model_copy(update={"source": settings.source.model_copy(update={"symbols": ("BTCUSDT",)})})
    asyncio.run(_ingest(settings, Faults(withhold=((10_001, TOTAL),))))
    second, _ = asyncio.run(_ingest(btc_only, Faults(withhold=((1, 10_000), (25_001, TOTAL)))))
    assert second.producer.stats.delivered > 8 * settings.quality.seed_messages

    third, _ = asyncio.run(_ingest(settings, Faults(withhold=((1, 25_000),))))
    quiet = {(d["s"], str(d["t"])) for d in _recording()[10_000:25_000] if d["s"] == "ETHUSDT"}
    assert third.stats.backfilled == len(quiet) and third.get_stats()["quality"]["duplicates_dropped"] == 0

    fourth, _ = asyncio.run(_ingest(settings, Faults()))
    assert fourth.producer.stats.delivered == 0
    assert fourth.get_stats()["quality"]["duplicates_dropped"] == TOTAL

    _consume(settings)
    _assert_exactly_the_recording(_table_rows(settings), quiet)
    ids = sorted(int(t) for _, t in quiet)
    gaps = [(e["symbol"], e["first_id"], e["last_id"], e["status"]) for e in _events(settings) if e["kind"] == "GAP"]
    assert gaps == [("ETHUSDT", ids[0], ids[-1], "OPEN"), ("ETHUSDT", ids[0], ids[-1], "RESOLVED")]
