"""A venue is one plug: a venue defined outside K2, in ``tests/aggtest.py`` alone (a parser and a registry
entry), runs through the embedded pipeline, over the emulator's real WebSocket, into the trades table.

The test venue, AGGTEST, publishes real Binance aggregate trades (``<symbol>@aggTrade``, recorded) as its
trades: aggregate ids are consecutive per symbol, so its trade ids get sequence tracking like any venue's.
Nothing in ``src/`` knows it exists.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from k2.config import K2Settings
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.query.engine import QueryEngine
from k2.services.pipeline import EmbeddedPipeline
from tests import aggtest
from tests.conftest import eventually_async

pytestmark = pytest.mark.integration


def test_a_venue_defined_in_a_test_runs_through_the_embedded_pipeline(settings: K2Settings) -> None:
    aggtest.register()
    source = settings.source.model_copy(
        update={"venue": "aggtest", "symbols": ("BTCUSDT", "ETH/USDT", "DOTUSDT"), "kinds": ("trades",)}
    )
    quality = settings.quality.model_copy(update={"backfill": False})
    settings = settings.model_copy(update={"source": source, "quality": quality})
    recorded = aggtest.recorded()

    async def replay() -> EmbeddedPipeline:
        async with BinanceEmulator(ReplayConfig(recording=aggtest.RECORDING, speed=None)) as emu:
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
    # Stamped by the feed from AGGTEST's symbol rules (its parser outputs no instrument).
    assert [r["instrument"] for r in rows] == [d["s"].removesuffix("USDT") + "/USDT" for d in recorded]
    assert pipeline.completeness.stats.gaps_detected == 0  # aggregate ids consecutive: tracked like trade ids
