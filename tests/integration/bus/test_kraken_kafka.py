"""Kraken through Kafka: the emulator (Kraken v2 + REST, with faults) -> `k2 ingest` machinery (sequence tracking,
dedup, REST backfill through Kraken's errors) -> Kafka (real broker and registry; the venue's trades, quotes and
quality-events topics) -> `k2 consume` machinery -> Iceberg.

The same expectations as the embedded test (tests/integration/test_kraken.py), computed from the recording and
the fault plan: the trades table holds exactly the recording's 1,000 trades once each, the quotes table its two
real tickers, and each gap is recorded OPEN then RESOLVED with exactly the withheld trades.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from k2.bus.topics import topic_name
from k2.config import K2Settings, QualitySettings
from k2.lake.quarantine import read_quarantine
from k2.schema.kinds import RecordKind
from k2.services.consume import run_consume
from k2.services.ingest import IngestService
from tests.integration.test_kraken import (
    FAULT_PLAN,
    SYMBOLS,
    TOTAL,
    assert_exactly_the_recording,
    assert_exactly_the_tickers,
    expected_faults,
    gap_events,
    quote_rows,
    run_settled,
    trade_rows,
    withheld_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.services]


def _settings(bus_settings: K2Settings) -> K2Settings:
    source = bus_settings.source.model_copy(
        update={
            "venue": "kraken", "symbols": SYMBOLS, "kinds": ("trades", "quotes"), "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.2,
        }
    )  # fmt: skip
    return bus_settings.model_copy(update={"source": source, "quality": QualitySettings(gap_grace_s=1.0)})


def test_kraken_faults_are_repaired_through_kafka_exactly_once(bus_settings: K2Settings, tmp_path: Path) -> None:
    settings = _settings(bus_settings)

    def make(s: K2Settings, ws_url: str) -> IngestService:
        return IngestService(s, ws_base_url=ws_url, is_sample_data=True)

    service, emu = asyncio.run(run_settled(make, settings, FAULT_PLAN))
    assert service.topics[RecordKind.TRADES].endswith(".trades.kraken")
    assert service.topics[RecordKind.TRADES] == topic_name(settings.kafka.asset_class, "trades", "kraken")
    withheld = withheld_ids()
    # Duplicates never reached the topic: what was produced is the recording, once.
    assert service.producer.stats.delivered == TOTAL and service.producer.stats.failed == 0
    assert service.sink.producers[("kraken", RecordKind.QUOTES)].stats.delivered == 2
    assert service.stats.backfilled == len(withheld)
    want = expected_faults(FAULT_PLAN)
    stats = service.get_stats()["quality"]
    assert stats["duplicates_dropped"] == want["duplicates"] and stats["out_of_order"] == want["out_of_order"]
    assert stats["gaps_detected"] == stats["gaps_resolved"] == want["gaps"]
    assert emu.rest is not None and emu.rest.requests[0].error == "EAPI:Rate limit exceeded"

    run_consume(settings, idle_exit_s=2.0, duration_s=120)  # trades, quotes and quality events
    assert_exactly_the_recording(trade_rows(settings), withheld)
    assert_exactly_the_tickers(quote_rows(settings))
    by_id: dict[str, list[str]] = {}
    for e in gap_events(settings):
        by_id.setdefault(e["event_id"], []).append(e["status"])
    assert len(by_id) == want["gaps"] and all(s == ["OPEN", "RESOLVED"] for s in by_id.values())
    assert list(read_quarantine(settings.lake.quarantine_dir)) == []
