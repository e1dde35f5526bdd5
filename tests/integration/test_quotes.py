"""Quotes end to end, embedded: the whole recorded Binance session (trades, bookTicker, depth) replayed by
the emulator over a real WebSocket into `k2 run`'s machinery, then the quotes, spread and as-of queries.

The quotes table must hold exactly the recording's bookTicker messages of the subscribed symbols, once
each, with exact values; a crossed quote the emulator injects is quarantined and counted, never stored.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings
from k2.emulator.faults import CROSSED_QUOTE, Faults
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.lake.quarantine import read_quarantine
from k2.query.engine import QueryEngine
from k2.services.pipeline import EmbeddedPipeline
from k2.sources import RejectReason
from tests.conftest import eventually_async

pytestmark = pytest.mark.integration


def _recorded(stream_suffix: str) -> list[dict[str, Any]]:
    """The ``data`` of every recorded frame of one kind, in recording order."""
    out = []
    for rec in read_recording(BUNDLED_BINANCE_SESSION):
        frame = json.loads(rec.frame)
        if frame["stream"].endswith(stream_suffix):
            out.append(frame["data"])
    return out


async def _replay(settings: K2Settings, faults: Faults) -> tuple[EmbeddedPipeline, BinanceEmulator]:
    async with BinanceEmulator(ReplayConfig(recording=BUNDLED_BINANCE_SESSION, speed=None, faults=faults)) as emu:
        pipeline = EmbeddedPipeline(settings, ws_base_url=emu.url, is_sample_data=True)
        run = asyncio.create_task(pipeline.run())

        async def drained() -> bool:
            return emu.finished.is_set() and pipeline.stats.frames >= emu.frames_sent

        await eventually_async(drained, timeout=240)
        pipeline.stop()
        await asyncio.wait_for(run, timeout=60)
    return pipeline, emu


@pytest.fixture(scope="module")
def session_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[K2Settings, EmbeddedPipeline, BinanceEmulator]:
    """The whole session with faults: duplicates, reorders, crossed quotes, two disconnects."""
    base = tmp_path_factory.mktemp("quotes")
    settings = K2Settings.model_validate(
        {
            "source": {"symbols": ["BTCUSDT", "ETHUSDT"], "kinds": ["trades", "quotes"],
                       "exchange_info_cache": str(base / "xinfo.json")},
            "lake": {"warehouse": str(base / "warehouse"), "flush_rows": 20_000, "flush_seconds": 0.5},
            "quality": {"backfill": False},
        }
    )  # fmt: skip
    faults = Faults(duplicate_every=997, reorder_every=1_009, crossed_every=5_000, disconnect_after=(40_000, 120_000))
    pipeline, emu = asyncio.run(_replay(settings, faults))
    return settings, pipeline, emu


def test_the_quotes_table_holds_exactly_the_recorded_book_tickers(
    session_lake: tuple[K2Settings, EmbeddedPipeline, BinanceEmulator],
) -> None:
    settings, _, emu = session_lake
    engine = QueryEngine.from_settings(settings)
    rows = engine.sql(
        "SELECT symbol, source_sequence, bid_price, bid_size, ask_price, ask_size, instrument, currency, "
        "timestamp, vendor_data FROM quotes"
    ).to_pylist()
    recorded = _recorded("@bookTicker")
    assert len(recorded) == 131_932 and emu.injected["duplicate"] > 0 and emu.injected["reorder"] > 0
    counts = Counter((r["symbol"], r["source_sequence"]) for r in rows)
    assert len(rows) == len(recorded) and max(counts.values()) == 1, "every quote once"
    by_key = {(r["symbol"], r["source_sequence"]): r for r in rows}
    for d in recorded:
        row = by_key[(d["s"], d["u"])]
        assert (row["bid_price"], row["bid_size"], row["ask_price"], row["ask_size"]) == (
            Decimal(d["b"]), Decimal(d["B"]), Decimal(d["a"]), Decimal(d["A"])
        )  # fmt: skip
    sample = (
        by_key[("ETHUSDT", recorded[-1]["u"])]
        if recorded[-1]["s"] == "ETHUSDT"
        else by_key[("BTCUSDT", recorded[-1]["u"])]
    )
    assert sample["timestamp"] is None  # bookTicker carries no exchange time
    assert sample["instrument"] in ("BTC/USDT", "ETH/USDT") and sample["currency"] == "USDT"
    assert dict(sample["vendor_data"])["update_id"] == str(sample["source_sequence"])


def test_trades_of_the_same_session_are_exact_and_depth_was_never_sent(
    session_lake: tuple[K2Settings, EmbeddedPipeline, BinanceEmulator],
) -> None:
    settings, pipeline, emu = session_lake
    engine = QueryEngine.from_settings(settings)
    ids = engine.sql("SELECT symbol, source_sequence FROM trades").to_pylist()
    assert len(ids) == len({(r["symbol"], r["source_sequence"]) for r in ids}) == 34_419
    # The emulator serves a stream only to a client that subscribed to it: depth diffs never left it.
    assert pipeline.stats.frames == emu.frames_sent
    assert emu.frames_sent < 179_316 - 12_965 + 2_000  # the depth frames were not sent


def test_an_injected_crossed_quote_is_quarantined_and_counted(
    session_lake: tuple[K2Settings, EmbeddedPipeline, BinanceEmulator],
) -> None:
    settings, pipeline, emu = session_lake
    crossed = emu.injected[CROSSED_QUOTE]
    assert crossed > 0
    quarantined = [r for r in read_quarantine(Path(settings.lake.quarantine_dir)) if r["reason"] == "crossed_book"]
    assert len(quarantined) == crossed
    assert pipeline.get_stats()["quote_quality"]["crossed"] == crossed
    assert all(RejectReason(r["reason"]) is RejectReason.CROSSED_BOOK for r in quarantined)


# Hand-verified from the recording (src/k2/emulator/recordings/...session...jsonl.gz, 1-based line numbers):
# each trade and the last bookTicker of its symbol received before it.
AS_OF_EXAMPLES = [
    # (symbol, trade id, trade line) -> (quote update id, quote line, bid, bid size, ask, ask size)
    (("BTCUSDT", 3735683259, 6), (50093239212, 5, "61837.63", "3.78826", "61837.64", "1.54698")),
    (("ETHUSDT", 1520538925, 69), (35346513615, 68, "2683.60", "1.99", "2683.61", "1.9205")),
    (("BTCUSDT", 3735683300, 367), (50093240070, 364, "61828.01", "0.05183", "61828.02", "1.36359")),
    (("ETHUSDT", 1520545000, 74503), (35346670902, 74502, "2682.80", "0.0115", "2682.81", "1.7998")),
]


@pytest.fixture(scope="module")
def clean_session(tmp_path_factory: pytest.TempPathFactory) -> K2Settings:
    """The session without faults: the wire order is the recording's order."""
    base = tmp_path_factory.mktemp("asof")
    settings = K2Settings.model_validate(
        {
            "source": {"symbols": ["BTCUSDT", "ETHUSDT"], "kinds": ["trades", "quotes"],
                       "exchange_info_cache": str(base / "xinfo.json")},
            "lake": {"warehouse": str(base / "warehouse"), "flush_rows": 50_000, "flush_seconds": 0.5},
            "quality": {"backfill": False},
        }
    )  # fmt: skip
    asyncio.run(_replay(settings, Faults()))
    return settings


@pytest.mark.parametrize(("trade", "quote"), AS_OF_EXAMPLES, ids=lambda x: f"{x[0]}" if isinstance(x[0], str) else "")
def test_as_of_join_gives_each_trade_the_quote_received_before_it(
    clean_session: K2Settings, trade: tuple[str, int, int], quote: tuple[int, int, str, str, str, str]
) -> None:
    symbol, trade_id, _ = trade
    update_id, _, bid, bid_size, ask, ask_size = quote
    engine = QueryEngine.from_settings(clean_session)
    joined = engine.trades_with_quotes(symbol=symbol, limit=1_000_000).to_pylist()
    (row,) = [r for r in joined if r["source_sequence"] == trade_id]
    assert row["quote_sequence"] == update_id
    assert (row["bid_price"], row["bid_size"], row["ask_price"], row["ask_size"]) == (
        Decimal(bid), Decimal(bid_size), Decimal(ask), Decimal(ask_size)
    )  # fmt: skip
    assert row["quote_received_at"] < row["ingestion_timestamp"]


def test_spread_statistics_are_exact_over_the_recorded_quotes(clean_session: K2Settings) -> None:
    engine = QueryEngine.from_settings(clean_session)
    stats = {r["symbol"]: r for r in engine.spread().to_pylist()}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        quotes = [d for d in _recorded("@bookTicker") if d["s"] == symbol]
        spreads = [Decimal(d["a"]) - Decimal(d["b"]) for d in quotes]
        got = stats[symbol]
        assert got["quotes"] == len(quotes)
        assert got["min_spread"] == min(spreads) and got["max_spread"] == max(spreads)
        assert got["mean_spread"] == (sum(spreads) / len(spreads)).quantize(Decimal("1e-12"))


def test_the_cli_shows_quotes_spreads_and_trades_with_their_quote(clean_session: K2Settings) -> None:
    warehouse = str(clean_session.lake.warehouse)
    runner = CliRunner()
    quotes = runner.invoke(
        app, ["query", "quotes", "--symbol", "BTCUSDT", "--limit", "1", "-f", "csv", "-w", warehouse]
    )
    assert quotes.exit_code == 0, quotes.output
    (row,) = list(csv.DictReader(io.StringIO(quotes.output)))
    assert (row["source_sequence"], row["bid_price"], row["ask_size"]) == ("50093239212", "61837.63", "1.54698")
    spread = runner.invoke(app, ["query", "spread", "-f", "csv", "-w", warehouse])
    assert spread.exit_code == 0, spread.output
    assert {r["symbol"]: int(r["quotes"]) for r in csv.DictReader(io.StringIO(spread.output))} == {
        "BTCUSDT": 73_174, "ETHUSDT": 58_758
    }  # fmt: skip
    asof = runner.invoke(app, ["query", "asof", "--symbol", "BTCUSDT", "--limit", "1", "-f", "csv", "-w", warehouse])
    assert asof.exit_code == 0, asof.output
    (first,) = list(csv.DictReader(io.StringIO(asof.output)))
    assert (first["trade_id"], first["bid_price"], first["ask_price"]) == ("3735683259", "61837.63", "61837.64")
