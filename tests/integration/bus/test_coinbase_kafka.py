"""Coinbase through Kafka: the recorded Exchange session with the acceptance fault plan -> `k2 ingest`'s
machinery (subscribe handshake, heartbeats, sequence tracking, REST backfill) -> Kafka (real broker and
registry; topics ``market.<asset_class>.{trades,quotes,quality_events}.coinbase``) -> `k2 consume` (trades,
quotes and quality events) -> Iceberg.

The same expectations as the embedded test (tests/integration/test_coinbase.py): the trades table holds
exactly the recording once each, the quotes table exactly the tickers the stream delivered once each.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from k2.bus.topics import topic_name
from k2.config import K2Settings, QualitySettings
from k2.emulator.faults import EXPECTED_REASON
from k2.lake.quarantine import read_quarantine
from k2.services.consume import run_consume
from k2.services.ingest import IngestService
from tests.integration.bus.conftest import high_watermarks
from tests.integration.test_coinbase import (
    FAULT_PLAN,
    PRODUCTS,
    assert_exactly_the_recording,
    assert_the_delivered_tickers_once_each,
    events,
    expected_faults,
    recorded,
    run_settled,
    table_rows,
    withheld_trades,
)

pytestmark = [pytest.mark.integration, pytest.mark.services]


def _settings(bus_settings: K2Settings, **quality: Any) -> K2Settings:
    source = bus_settings.source.model_copy(
        update={"venue": "coinbase", "symbols": PRODUCTS, "kinds": ("trades", "quotes"), "reconnect_initial_s": 0.05,
                "reconnect_max_s": 0.2},
    )  # fmt: skip
    return bus_settings.model_copy(
        update={"source": source, "quality": QualitySettings(**{"gap_grace_s": 1.0, **quality})}
    )


def test_faults_are_repaired_through_kafka_and_both_tables_hold_exactly_the_recording(
    bus_settings: K2Settings, tmp_path: Path
) -> None:
    settings = _settings(bus_settings)

    def make(s: K2Settings, ws_url: str) -> IngestService:
        return IngestService(s, ws_base_url=ws_url, is_sample_data=True)

    service, emu = asyncio.run(run_settled(make, settings, FAULT_PLAN))
    assert service.producer.stats.failed == service.events_producer.stats.failed == 0
    withheld = withheld_trades()
    delivered_tickers = recorded(("ticker",), withheld=False)

    # What reached the topics: every trade once (duplicates dropped before Kafka), every delivered ticker once.
    asset_class = settings.kafka.asset_class
    assert sum(high_watermarks(settings, topic_name(asset_class, "trades", "coinbase")).values()) == 107
    assert sum(high_watermarks(settings, topic_name(asset_class, "quotes", "coinbase")).values()) == len(
        delivered_tickers
    )
    assert service.stats.backfilled == len(withheld) == 18

    run_consume(settings, idle_exit_s=2.0, duration_s=120)
    assert_exactly_the_recording(table_rows(settings), withheld)
    assert_the_delivered_tickers_once_each(table_rows(settings, "quotes"))

    plan = expected_faults(FAULT_PLAN)
    stats = service.get_stats()["quality"]
    assert stats["duplicates_dropped"] == sum(c["duplicates"] for c in plan.values())
    assert stats["gaps_detected"] == stats["gaps_resolved"] == sum(c["gaps"] for c in plan.values()) == 5
    gaps = [e for e in events(settings) if e["kind"] == "GAP"]
    by_id: dict[str, list[str]] = {}
    for e in gaps:
        by_id.setdefault(e["event_id"], []).append(e["status"])
    assert len(by_id) == 5 and all(s == ["OPEN", "RESOLVED"] for s in by_id.values())
    resolved = [e for e in gaps if e["status"] == "RESOLVED"]
    assert {(e["symbol"], str(i)) for e in resolved for i in range(e["first_id"], e["last_id"] + 1)} == withheld

    bad = {k: n for k, n in emu.injected.items() if k in EXPECTED_REASON and n}
    want: Counter[str] = Counter()
    for kind, n in bad.items():
        want[EXPECTED_REASON[kind].value] += n
    assert Counter(r["reason"] for r in read_quarantine(Path(settings.lake.quarantine_dir))) == want
    assert [r.status for r in emu.rest.requests] == [429, 503] + [200] * 5
