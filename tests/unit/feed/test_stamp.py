"""The pipeline columns stamped by the feed: platform sequence, sample flag and the canonical instrument.

Parsers output the wire form (no instrument); the feed gives each row the instrument its venue's symbol
rules give its symbol, for trades and quotes alike, after deduplication.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import K2Settings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.feed.feed import FeedStart, VenueFeed
from k2.feed.stamp import parse_canonical, stamp
from k2.lake.quarantine import Quarantine
from k2.schema.kinds import PIPELINE_COLUMNS, RecordKind, canonical_schema, wire_schema
from k2.sources import RawFrame, load_venue
from k2.sources.binance.symbols import BinanceSymbols
from k2.sources.symbols import Instrument, SymbolInfo
from tests.conftest import binance_parser


@pytest.fixture(scope="module")
def session_frames() -> list[RawFrame]:
    """The first 3,000 frames of the bundled real session (trades and best bid/offer of BTCUSDT, ETHUSDT)."""
    recorded = itertools.islice(read_recording(BUNDLED_BINANCE_SESSION), 3_000)
    return [RawFrame(f.frame.encode(), f.recv_us) for f in recorded]


@pytest.mark.parametrize("kind", [RecordKind.TRADES, RecordKind.QUOTES])
def test_parsers_output_the_wire_form_and_the_feed_adds_the_pipeline_columns(
    kind: RecordKind, session_frames: list[RawFrame]
) -> None:
    assert "instrument" in PIPELINE_COLUMNS
    assert not set(PIPELINE_COLUMNS) & set(wire_schema(kind).names)
    assert set(PIPELINE_COLUMNS) <= set(canonical_schema(kind).names)
    parsed = binance_parser(kinds=[RecordKind.TRADES, RecordKind.QUOTES]).parse(session_frames)
    assert parsed.records[kind].schema == wire_schema(kind)


def test_stamp_numbers_the_rows_and_gives_each_its_symbols_instrument(session_frames: list[RawFrame]) -> None:
    parsed = binance_parser(kinds=[RecordKind.TRADES, RecordKind.QUOTES]).parse(session_frames)
    names = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
    for kind, batch in parsed.records.items():
        stamped = stamp(kind, batch, 41, True, names)
        assert stamped.schema == canonical_schema(kind)
        rows = stamped.to_pylist()
        assert {r["symbol"] for r in rows} == set(names)
        assert [r["instrument"] for r in rows] == [names[r["symbol"]] for r in rows]
        assert [r["platform_sequence"] for r in rows] == list(range(41, 41 + len(rows)))
        assert {r["is_sample_data"] for r in rows} == {True}
        wire = batch.to_pylist()
        assert [{k: v for k, v in r.items() if k not in PIPELINE_COLUMNS} for r in rows] == wire
    with pytest.raises(KeyError):  # a symbol the feed has no instrument for is a bug, never a silent null
        stamp(RecordKind.TRADES, parsed.records[RecordKind.TRADES], 1, True, {"BTCUSDT": "BTC/USDT"})


def test_parse_canonical_stamps_the_venues_instruments(session_frames: list[RawFrame]) -> None:
    parsed = parse_canonical(
        "binance", session_frames, symbols=["btc/usdt", "ETHUSDT"], kinds=(RecordKind.TRADES, RecordKind.QUOTES)
    )
    for batch in parsed.records.values():
        symbols = batch.column("symbol").to_pylist()
        assert batch.column("instrument").to_pylist() == [s.removesuffix("USDT") + "/USDT" for s in symbols]


class _RenamingRules(BinanceSymbols):
    """Binance's rules whose metadata names BTC "XBT" (as another venue's would): proves the feed stamps
    what the rules it holds say, not something a parser computed."""

    def instrument(self, symbol: str) -> Instrument:
        found = super().instrument(symbol)
        return Instrument("XBT", found.quote) if found.base == "BTC" else found


def test_a_venue_feed_stamps_the_instrument_its_symbol_rules_give(
    tmp_path: Path, session_frames: list[RawFrame]
) -> None:
    settings = K2Settings(
        source=SourceSettings(exchange_info_cache=tmp_path / "x.json"), lake=LakeSettings(warehouse=tmp_path)
    )
    feed = VenueFeed(
        load_venue("binance"), settings, symbols=("BTC/USDT", "ethusdt"), kinds=(RecordKind.TRADES, RecordKind.QUOTES),
        rules=_RenamingRules({"ETHUSDT": SymbolInfo("ETHUSDT", "ETH", "USDT")}),
        quarantine=Quarantine(tmp_path / "q", "binance"), start=FeedStart(), is_sample_data=True,
        ws_base_url="ws://127.0.0.1:9",
    )  # fmt: skip
    assert feed.parser.symbols == ("BTCUSDT", "ETHUSDT")  # both forms, the venue's symbols
    out = feed.take(session_frames, feed.parser.parse(session_frames))
    assert {k for k, _ in out} == {RecordKind.TRADES, RecordKind.QUOTES}
    for _, batch in out:
        table = pa.Table.from_batches([batch])
        pairs = set(zip(table.column("symbol").to_pylist(), table.column("instrument").to_pylist(), strict=True))
        assert pairs == {("BTCUSDT", "XBT/USDT"), ("ETHUSDT", "ETH/USDT")}
