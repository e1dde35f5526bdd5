"""A venue is one plug: a venue defined in this file alone (a parser and a registry entry) runs through
the embedded pipeline, over the emulator's real WebSocket, into the trades table.

The test venue, AGGTEST, publishes real Binance aggregate trades (``<symbol>@aggTrade``, recorded) as its
trades: aggregate ids are consecutive per symbol, so its trade ids get sequence tracking like any venue's.
Nothing outside this file knows it exists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.config import K2Settings
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind, wire_schema
from k2.services.pipeline import EmbeddedPipeline
from k2.sources import ParsedBatch, RawFrame, Rejected, RejectReason, register_venue
from k2.sources.columns import UTC_US, empty_lists, exact_decimals, map_from_columns, message_ids
from k2.sources.symbols import Instrument
from k2.sources.venue import ConnectionLimits, SymbolRules, Venue
from tests.conftest import FIXTURES, eventually_async

pytestmark = pytest.mark.integration

RECORDING = FIXTURES / "aggtrade" / "aggtrade_ws_btcusdt_ethusdt_dotusdt_2021-04-04.jsonl"


# --- the whole venue definition -----------------------------------------------------------------------
class AggTradeParser:
    """``{"stream": "btcusdt@aggTrade", "data": {"a": id, "p": "price", "q": "qty", "T": ms, "m": bool}}``."""

    def __init__(self, symbols: Sequence[str], kinds: Sequence[RecordKind], *, rules: SymbolRules, **_: Any) -> None:
        self.symbols, self.kinds, self.rules = tuple(symbols), tuple(kinds), rules

    def stream_urls(self, base_url: str) -> list[str]:
        return [f"{base_url}/stream?streams=" + "/".join(f"{s.lower()}@aggTrade" for s in self.symbols)]

    def subscribe_messages(self) -> list[str]:
        return []

    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        out, rows = ParsedBatch(), []
        for frame in frames:
            try:
                d = json.loads(frame.payload)["data"]
                rows.append((d["s"], int(d["a"]), d["p"], d["q"], int(d["T"]), bool(d["m"]), frame.received_at_us))
            except (ValueError, KeyError, TypeError) as exc:
                out.rejected.append(Rejected(frame, RejectReason.MALFORMED_JSON, str(exc)))
        if rows:
            s, ids, p, q, t, m, recv = (list(c) for c in zip(*rows, strict=True))
            (price, _), (qty, _) = exact_decimals(p), exact_decimals(q)
            symbols = pa.array(s)
            cols = {
                "message_id": message_ids("AGGTEST", s, ids), "trade_id": pa.array(ids).cast(pa.string()),
                "symbol": symbols, "exchange": pa.repeat("AGGTEST", len(s)), "asset_class": pa.repeat("crypto", len(s)),
                "timestamp": pa.array(np.array(t) * 1000, UTC_US), "price": price, "quantity": qty,
                "currency": pa.array([self.rules.instrument(x).quote for x in s]),
                "side": pc.if_else(pa.array(m), "SELL", "BUY"), "trade_conditions": empty_lists(len(s)),
                "source_sequence": pa.array(ids), "ingestion_timestamp": pa.array(recv, UTC_US),
                "vendor_data": map_from_columns(["aggregate_id"], [pa.array(ids)], len(s)),
            }  # fmt: skip
            schema = wire_schema(RecordKind.TRADES)
            out.records[RecordKind.TRADES] = pa.RecordBatch.from_arrays(
                [cols[f.name].cast(f.type) for f in schema], schema=schema
            )
        return out


class UsdtSymbols:
    def native(self, text: str) -> str:
        return text.strip().upper().replace("/", "")

    def instrument(self, symbol: str) -> Instrument:
        return Instrument(symbol.removesuffix("USDT"), "USDT")


AGGTEST = Venue(
    name="aggtest", exchange="AGGTEST", asset_class="crypto", ws_url="wss://aggtest.invalid", rest_url=None,
    kinds=(RecordKind.TRADES,), streams={RecordKind.TRADES: "aggTrade"},
    limits=ConnectionLimits(max_streams_per_connection=1024, control_messages_per_s=5, max_connection_age_s=86_400),
    parser=AggTradeParser, symbol_rules=lambda metadata: UsdtSymbols(),
    emulator="k2.emulator.binance:BinanceProtocol",
)  # fmt: skip
# ------------------------------------------------------------------------------------------------------


def test_a_venue_defined_in_a_test_runs_through_the_embedded_pipeline(settings: K2Settings) -> None:
    register_venue(AGGTEST)
    source = settings.source.model_copy(
        update={"venue": "aggtest", "symbols": ("BTCUSDT", "ETH/USDT", "DOTUSDT"), "kinds": ("trades",)}
    )
    quality = settings.quality.model_copy(update={"backfill": False})
    settings = settings.model_copy(update={"source": source, "quality": quality})
    recorded = [json.loads(line)["data"] for line in RECORDING.read_text().splitlines()]

    async def replay() -> EmbeddedPipeline:
        async with BinanceEmulator(ReplayConfig(recording=RECORDING, speed=None)) as emu:
            pipeline = EmbeddedPipeline(settings, ws_base_url=emu.url, is_sample_data=True)
            run = asyncio.create_task(pipeline.run())

            async def drained() -> bool:
                return emu.finished.is_set() and pipeline.stats.frames >= emu.frames_sent

            await eventually_async(drained, timeout=60)
            pipeline.stop()
            await run
        return pipeline

    pipeline = asyncio.run(replay())
    assert pipeline.stats.rows_committed == len(recorded) == 1_910 and pipeline.stats.rejected == 0
    rows = QueryEngine.from_settings(settings).sql("SELECT * FROM trades ORDER BY platform_sequence").to_pylist()
    assert {r["exchange"] for r in rows} == {"AGGTEST"}
    assert [(r["symbol"], r["source_sequence"]) for r in rows] == [(d["s"], d["a"]) for d in recorded]
    assert [(r["price"], r["quantity"]) for r in rows] == [(Decimal(d["p"]), Decimal(d["q"])) for d in recorded]
    assert [r["platform_sequence"] for r in rows] == list(range(1, 1_911))
    assert pipeline.completeness.stats.gaps_detected == 0  # aggregate ids consecutive: tracked like trade ids
