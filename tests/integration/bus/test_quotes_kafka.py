"""Quotes through Kafka: the whole recorded session (trades + bookTicker) by the emulator -> `k2 ingest`
machinery -> Kafka (real broker, registry) -> `k2 consume` machinery -> the quotes and trades tables.

The quotes table must hold exactly the recording's bookTicker messages, once each, exact values, via
the same exactly-once consumer as trades; an injected crossed quote is quarantined, never produced.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

from k2.config import K2Settings
from k2.emulator.faults import CROSSED_QUOTE, Faults
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.quarantine import read_quarantine
from k2.schema.kinds import RecordKind
from k2.services.consume import build_consumer
from k2.services.ingest import IngestService
from tests.conftest import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.services]


def _recorded_book_tickers() -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for rec in read_recording(BUNDLED_BINANCE_SESSION):
        frame = json.loads(rec.frame)
        if frame["stream"].endswith("@bookTicker"):
            d = frame["data"]
            out[(d["s"], d["u"])] = d
    return out


async def _ingest(settings: K2Settings, faults: Faults) -> tuple[IngestService, BinanceEmulator]:
    config = ReplayConfig(recording=BUNDLED_BINANCE_SESSION, speed=None, faults=faults)
    async with BinanceEmulator(config) as emu:
        service = IngestService(settings, ws_base_url=emu.url, is_sample_data=True)
        run = asyncio.create_task(service.run())

        async def received_everything() -> bool:
            assert not run.done(), "ingest stopped early"
            return emu.finished.is_set() and service.stats.frames >= emu.frames_sent

        await eventually_async(received_everything, timeout=240)
        service.stop()
        await run
    return service, emu


def test_the_session_lands_in_the_quotes_and_trades_tables_exactly_once(bus_settings: K2Settings) -> None:
    settings = bus_settings.model_copy(
        update={
            "source": bus_settings.source.model_copy(update={"kinds": ("trades", "quotes")}),
            "quality": bus_settings.quality.model_copy(update={"backfill": False}),
        }
    )
    faults = Faults(duplicate_every=997, reorder_every=1_009, crossed_every=5_000, disconnect_after=(60_000,))
    service, emu = asyncio.run(_ingest(settings, faults))
    recorded = _recorded_book_tickers()
    quotes_producer = service.sink.producers[("binance", RecordKind.QUOTES)]
    assert quotes_producer.stats.delivered == len(recorded) == 131_932
    assert quotes_producer.stats.failed == 0

    for kind in (RecordKind.TRADES, RecordKind.QUOTES):
        consumer, registry = build_consumer(settings, kind=kind)
        stats = consumer.run(idle_exit_s=2.0, duration_s=240)
        registry.close()
        assert stats.dead_lettered == 0

    lake = settings.lake
    catalog = open_catalog(lake)
    quotes = load_or_create_table(catalog, lake, RecordKind.QUOTES).scan().to_arrow().to_pylist()
    assert len(quotes) == len(recorded)
    assert len({(q["symbol"], q["source_sequence"]) for q in quotes}) == len(recorded), "every quote once"
    for q in quotes:
        d = recorded[(q["symbol"], q["source_sequence"])]
        assert (q["bid_price"], q["bid_size"], q["ask_price"], q["ask_size"]) == (
            Decimal(d["b"]), Decimal(d["B"]), Decimal(d["a"]), Decimal(d["A"])
        )  # fmt: skip
    trades = load_or_create_table(catalog, lake, RecordKind.TRADES).scan(selected_fields=("source_sequence",))
    assert trades.to_arrow().num_rows == 34_419

    crossed = [e for e in read_quarantine(lake.quarantine_dir) if e["reason"] == "crossed_book"]
    assert len(crossed) == emu.injected[CROSSED_QUOTE] > 0
    assert service.get_stats()["quote_quality"]["crossed"] == emu.injected[CROSSED_QUOTE]
