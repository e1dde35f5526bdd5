"""End to end over the real WebSocket path: emulator on loopback -> `k2 run` machinery -> Iceberg -> query.

The table must hold exactly the recording: same count, every trade id once, exact decimal prices and
quantities, correct aggressor sides, vendor_data intact, timestamps UTC.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.emulator.faults import ADVERSARIAL_KINDS, EXPECTED_REASON, MALFORMED_KINDS, Faults
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.feed.stamp import parse_canonical
from k2.lake.quarantine import read_quarantine
from k2.metrics import MESSAGES_REJECTED
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.services.pipeline import EmbeddedPipeline
from k2.sources import RawFrame
from tests.conftest import eventually_async

pytestmark = pytest.mark.integration


def _expected() -> dict[tuple[str, str], dict[str, Any]]:
    """(symbol, trade_id) -> expected canonical values, computed independently from the raw JSON."""
    out = {}
    for rec in read_recording(BUNDLED_BINANCE_TRADES):
        d = json.loads(rec.frame)["data"]
        out[(d["s"], str(d["t"]))] = {
            "price": Decimal(d["p"]),
            "quantity": Decimal(d["q"]),
            "side": "SELL" if d["m"] else "BUY",
            "timestamp": datetime.fromtimestamp(d["T"] / 1000, tz=UTC),
            "vendor_data": {
                "is_buyer_maker": "true" if d["m"] else "false",
                "event_type": "trade",
                "event_time": str(d["E"]),
                "trade_time": str(d["T"]),
                "base_asset": d["s"][:3],
                "quote_asset": "USDT",
                "is_best_match": "true",
            },
        }
    return out


async def _replay(settings: K2Settings, faults: Faults) -> tuple[EmbeddedPipeline, BinanceEmulator]:
    async with BinanceEmulator(ReplayConfig(speed=None, faults=faults)) as emu:
        pipeline = EmbeddedPipeline(settings, ws_base_url=emu.url, is_sample_data=True)
        run = asyncio.create_task(pipeline.run())

        async def received_everything() -> bool:
            assert not run.done(), "pipeline stopped early"
            return emu.finished.is_set() and pipeline.stats.frames >= emu.frames_sent

        await eventually_async(received_everything, timeout=120)
        pipeline.stop()
        await run
    return pipeline, emu


def _assert_table_is_exactly_the_recording(settings: K2Settings) -> None:
    expected = _expected()
    engine = QueryEngine.from_settings(settings)
    rows = engine.sql(
        "SELECT symbol, trade_id, price, quantity, side, timestamp, vendor_data, is_sample_data FROM trades"
    ).to_pylist()
    assert len(rows) == len(expected) == 34_419
    keys = Counter((r["symbol"], r["trade_id"]) for r in rows)
    assert set(keys) == set(expected) and max(keys.values()) == 1, "every trade id exactly once"
    for r in rows:
        want = expected[(r["symbol"], r["trade_id"])]
        assert r["price"] == want["price"] and r["quantity"] == want["quantity"]
        assert r["side"] == want["side"]
        assert r["timestamp"] == want["timestamp"]
        assert dict(r["vendor_data"]) == want["vendor_data"]
        assert r["is_sample_data"] is True
    # vendor_data is a real map, readable from SQL with a bound parameter.
    makers = engine.sql("SELECT count(*) AS n FROM trades WHERE vendor_data['is_buyer_maker'] = ?", ["true"])
    assert makers.to_pylist() == [{"n": sum(1 for v in expected.values() if v["side"] == "SELL")}]


def test_emulator_to_iceberg_holds_exactly_the_recording(settings: K2Settings) -> None:
    pipeline, _ = asyncio.run(_replay(settings, Faults()))
    assert pipeline.stats.rejected == 0
    assert pipeline.stats.rows_committed == 34_419
    assert pipeline.stats.commits >= 2  # flush_rows=5,000 in the test settings
    _assert_table_is_exactly_the_recording(settings)


def test_bad_frames_are_quarantined_and_the_pipeline_keeps_running(settings: K2Settings) -> None:
    before = {k: MESSAGES_REJECTED.labels(venue="binance", reason=k)._value.get() for k in MALFORMED_KINDS}
    pipeline, emu = asyncio.run(_replay(settings, Faults(malformed_every=997, disconnect_after=(20_000,))))
    injected = {k: emu.injected[k] for k in MALFORMED_KINDS}
    assert all(n > 0 for n in injected.values()), injected
    quarantined = Counter(e["reason"] for e in read_quarantine(settings.lake.quarantine_dir))
    assert dict(quarantined) == injected
    after = {k: MESSAGES_REJECTED.labels(venue="binance", reason=k)._value.get() for k in MALFORMED_KINDS}
    assert {k: after[k] - before[k] for k in MALFORMED_KINDS} == injected
    for entry in read_quarantine(settings.lake.quarantine_dir):
        assert entry["raw"] and entry["detail"] and entry["venue"] == "binance"
        assert datetime.fromisoformat(entry["received_at"]).utcoffset().total_seconds() == 0
    assert pipeline.stats.rejected == sum(injected.values())
    _assert_table_is_exactly_the_recording(settings)


@pytest.mark.parametrize("parse_process", [False, True], ids=["parse-here", "parse-process"])
def test_hostile_frames_among_real_ones_are_quarantined_and_k2_run_keeps_running(
    settings: K2Settings, parse_process: bool
) -> None:
    """Issue 9: every adversarial kind (absurd ids, times and prices, `data`/`e` of the wrong type,
    foreign streams), each built from the real frame it follows, arrives among the real frames over
    the WebSocket. The pipeline never stops; each is quarantined with the reason its kind maps to;
    the table holds exactly the recording, once each (no bogus row took a real trade's place).
    Likewise with the parser in its own process (``source.parse_process``)."""
    if parse_process:
        settings = settings.model_copy(update={"source": settings.source.model_copy(update={"parse_process": True})})
    faults = Faults(adversarial_every=701, malformed_every=1009, disconnect_after=(17_000,))
    pipeline, emu = asyncio.run(_replay(settings, faults))
    injected = {k: emu.injected[k] for k in EXPECTED_REASON if emu.injected[k]}
    assert set(ADVERSARIAL_KINDS) <= set(injected), "every adversarial kind was sent"
    expected: Counter[str] = Counter()
    for kind, n in injected.items():
        expected[EXPECTED_REASON[kind].value] += n
    quarantined = Counter(e["reason"] for e in read_quarantine(settings.lake.quarantine_dir))
    assert quarantined == expected
    assert pipeline.stats.rejected == sum(injected.values())
    _assert_table_is_exactly_the_recording(settings)


def test_no_trade_time_can_crash_the_pipelines_bookkeeping(
    settings: K2Settings, bundled_frames: list[RawFrame]
) -> None:
    """The feed's per-symbol bookkeeping works on integer microseconds: a row of year 10000 (which
    validation stops before it gets there) would not crash it the way a Python datetime did."""
    pipeline = EmbeddedPipeline(settings, ws_base_url="ws://127.0.0.1:9", is_sample_data=True)
    batch = parse_canonical(
        "binance", bundled_frames[:10], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]
    index = batch.schema.get_field_index("timestamp")
    year_10000 = pa.array([253_402_300_800_000_000] * batch.num_rows, pa.int64()).cast(batch.schema.field(index).type)
    pipeline.feed._observe_trades(batch.set_column(index, batch.schema.field(index), year_10000))
    assert sum(pipeline.stats.trades_by_symbol.values()) == 10


def test_restart_continues_platform_sequence(settings: K2Settings) -> None:
    asyncio.run(_replay(settings, Faults()))
    engine = QueryEngine.from_settings(settings)
    top = engine.sql("SELECT min(platform_sequence) AS lo, max(platform_sequence) AS hi FROM trades").to_pylist()
    assert top == [{"lo": 1, "hi": 34_419}]
    again = EmbeddedPipeline(settings, ws_base_url="ws://127.0.0.1:9", is_sample_data=True)
    assert again.next_platform_sequence == 34_420
