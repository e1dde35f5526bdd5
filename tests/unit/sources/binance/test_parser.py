"""The Binance parser on real recorded frames: every field asserted, every reject reason exercised."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2.config import ValidationSettings
from k2.errors import ConfigError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame, RejectReason, load_venue
from k2.sources.binance import BinanceParser
from k2.sources.binance.symbols import parse_exchange_info
from k2.sources.columns import K2_NAMESPACE, message_id, message_ids
from k2.sources.symbols import Instrument, SymbolInfo, split_symbol_offline
from tests.conftest import FIXTURES, binance_parser

BINANCE = FIXTURES / "binance"
EXPECTED: list[dict[str, Any]] = json.loads((BINANCE / "expected.json").read_text())["cases"]


def _frame(case: dict[str, Any]) -> RawFrame:
    line = (BINANCE / case["file"]).read_bytes().splitlines()[case["line"] - 1]
    return RawFrame(line, case["received_at_us"])


@pytest.mark.parametrize("case", EXPECTED, ids=lambda c: f"{c['file']}:{c['line']}")
def test_recorded_frame_parses_to_expected_values(case: dict[str, Any]) -> None:
    parsed = parse_canonical(
        "binance", [_frame(case)], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=41, is_sample_data=False
    )
    assert parsed.rejected == []
    (row,) = parsed.records[RecordKind.TRADES].to_pylist()
    assert row["message_id"] == str(uuid.uuid5(K2_NAMESPACE, f"BINANCE:{case['symbol']}:{case['trade_id']}"))
    for name in ("trade_id", "symbol", "exchange", "asset_class", "currency", "side", "trade_conditions"):
        assert row[name] == case[name], name
    assert row["source_sequence"] == case["source_sequence"]
    assert row["timestamp"] == datetime.fromisoformat(case["timestamp"])
    assert row["ingestion_timestamp"] == datetime.fromisoformat(case["ingestion_timestamp"])
    assert row["timestamp"].utcoffset().total_seconds() == 0
    assert row["price"] == Decimal(case["price"]) and isinstance(row["price"], Decimal)
    assert row["quantity"] == Decimal(case["quantity"])
    assert dict(row["vendor_data"]) == case["vendor_data"]
    assert row["platform_sequence"] == 41
    assert row["is_sample_data"] is False


def test_whole_recording_parses_exactly(bundled_frames: list[RawFrame]) -> None:
    parsed = parse_canonical(
        "binance", bundled_frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    assert parsed.rejected == [] and parsed.control == 0
    table = parsed.records[RecordKind.TRADES]
    assert table.num_rows == 34_419
    rows = table.to_pylist()
    by_symbol: dict[str, list[int]] = {}
    for row in rows:
        by_symbol.setdefault(row["symbol"], []).append(row["source_sequence"])
    # Provenance README: ids strictly consecutive per symbol, these exact ranges.
    assert sorted(by_symbol["BTCUSDT"]) == list(range(3735683259, 3735703163))
    assert sorted(by_symbol["ETHUSDT"]) == list(range(1520538925, 1520553440))
    btc_sides = Counter(r["side"] for r in rows if r["symbol"] == "BTCUSDT")
    assert btc_sides == {"SELL": 10_811, "BUY": 19_904 - 10_811}  # m=true on 10,811 BTC messages
    assert [r["platform_sequence"] for r in rows] == list(range(1, 34_420))
    assert all(r["is_sample_data"] for r in rows)
    assert len({r["message_id"] for r in rows}) == 34_419


def _bad(payload: bytes) -> RawFrame:
    return RawFrame(payload, 1_723_161_256_000_000)


GOOD = b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":1,"p":"1.5","q":"2","T":1723161255342,"m":true,"M":true}'


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"stream":"btcusdt@trade","data":{"e":"trade",', RejectReason.MALFORMED_JSON),
        (b"not json at all", RejectReason.MALFORMED_JSON),
        (b"[1, 2, 3]", RejectReason.WRONG_TYPE),
        (GOOD.replace(b'"t":1,', b""), RejectReason.MISSING_FIELD),
        (
            b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"q":"1","T":1,"m":true}}',
            RejectReason.MISSING_FIELD,
        ),
        (b'{"foo":1}', RejectReason.MISSING_FIELD),
        (GOOD.replace(b'"t":1', b'"t":"1"'), RejectReason.WRONG_TYPE),
        (GOOD.replace(b'"p":"1.5"', b'"p":1.5'), RejectReason.WRONG_TYPE),
        (GOOD.replace(b'"p":"1.5"', b'"p":"abc"'), RejectReason.INVALID_NUMBER),
        (GOOD.replace(b'"p":"1.5"', b'"p":"NaN"'), RejectReason.INVALID_NUMBER),
        (GOOD.replace(b'"q":"2"', b'"q":"0.0000000000001"'), RejectReason.INVALID_NUMBER),
        (GOOD.replace(b'"p":"1.5"', b'"p":"-1.5"'), RejectReason.NON_POSITIVE),
        (GOOD.replace(b'"q":"2"', b'"q":"0.00000000"'), RejectReason.NON_POSITIVE),
        (
            b'{"stream":"btcusdt@trade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"1","q":"1"}}',
            RejectReason.UNKNOWN_EVENT,
        ),
        (  # a stream the adapter did not subscribe to, whatever it holds
            b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"1","q":"1"}}',
            RejectReason.UNSUBSCRIBED,
        ),
        (GOOD.replace(b'"e":"trade"', b'"e":"kline"'), RejectReason.UNKNOWN_EVENT),
    ],
)
def test_bad_frames_are_rejected_with_reason_and_good_ones_kept(payload: bytes, reason: RejectReason) -> None:
    good = _bad(GOOD)
    bad = _bad(payload)
    parsed = parse_canonical(
        "binance", [good, bad, good], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False
    )
    assert [(r.reason, r.frame) for r in parsed.rejected] == [(reason, bad)]
    assert parsed.rejected[0].detail
    assert parsed.rows(RecordKind.TRADES) == 2
    assert parsed.records[RecordKind.TRADES].column("platform_sequence").to_pylist() == [1, 2]


def test_subscription_replies_are_control_not_errors() -> None:
    parsed = parse_canonical(
        "binance",
        [_bad(b'{"result":null,"id":1}')],
        symbols=["BTCUSDT", "ETHUSDT"],
        first_sequence=1,
        is_sample_data=False,
    )
    assert parsed.rejected == [] and parsed.control == 1 and parsed.records == {}


def test_microsecond_time_unit() -> None:
    # With timeUnit=MICROSECOND Binance sends both times in µs.
    payload = GOOD.replace(b'"T":1723161255342', b'"T":1723161255342123').replace(
        b'"E":1723161255343', b'"E":1723161255343001'
    )
    parsed = parse_canonical(
        "binance", [_bad(payload)], symbols=["BTCUSDT"], first_sequence=1, is_sample_data=False, time_unit="MICROSECOND"
    )
    (row,) = parsed.records[RecordKind.TRADES].to_pylist()
    assert row["timestamp"] == datetime.fromisoformat("2024-08-08T23:54:15.342123+00:00")


def test_message_id_is_uuid5() -> None:
    cases = [("BTCUSDT", 0), ("ETHUSDT", 1520553439), ("X", 2**62)]
    expected = [str(uuid.uuid5(K2_NAMESPACE, f"BINANCE:{symbol}:{tid}")) for symbol, tid in cases]
    assert [message_id("BINANCE", symbol, tid) for symbol, tid in cases] == expected
    symbols, ids = zip(*cases, strict=True)
    assert message_ids("BINANCE", symbols, ids).to_pylist() == expected
    assert message_ids("BINANCE", [], []).to_pylist() == []


def test_stream_urls_respect_the_1024_stream_limit() -> None:
    adapter = binance_parser(["BTCUSDT", "ETHUSDT"])
    assert adapter.stream_urls("wss://stream.binance.com:9443") == [
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade"
    ]
    assert adapter.subscribe_messages() == []
    urls = binance_parser([f"S{i}USDT" for i in range(2049)]).stream_urls("ws://h:1/")
    assert [u.count("@trade") for u in urls] == [1024, 1024, 1]
    assert binance_parser(["a"], [RecordKind.TRADES], time_unit="MICROSECOND").stream_urls("ws://h") == [
        "ws://h/stream?streams=a@trade&timeUnit=MICROSECOND"
    ]


def test_the_subscription_is_upper_case_venue_symbols_and_never_empty() -> None:
    adapter = binance_parser(["btcusdt", "BTCUSDT", "ethusdt"])
    assert adapter.symbols == ("BTCUSDT", "ETHUSDT") and adapter.kinds == (RecordKind.TRADES,)
    assert adapter.stream_names() == ["btcusdt@trade", "ethusdt@trade"]
    with pytest.raises(ConfigError, match="at least one symbol"):
        binance_parser([])
    with pytest.raises(ConfigError, match="time_unit"):
        binance_parser(["BTCUSDT"], time_unit="SECOND")


def test_base_and_quote_from_exchange_info_then_offline_fallback() -> None:
    info = parse_exchange_info(
        b'{"timezone":"UTC","symbols":[{"symbol":"WBTCBTC","status":"TRADING","baseAsset":"WBTC","quoteAsset":"BTC"}]}'
    )
    assert info == {"WBTCBTC": SymbolInfo("WBTCBTC", "WBTC", "BTC")}
    rules = load_venue("binance").rules(info)
    assert rules.instrument("WBTCBTC") == Instrument("WBTC", "BTC")
    assert rules.instrument("ETHFDUSD") == Instrument("ETH", "FDUSD")  # not in the metadata: offline rule
    assert split_symbol_offline("BTCUSDT") == SymbolInfo("BTCUSDT", "BTC", "USDT")
    assert split_symbol_offline("USDT") == SymbolInfo("USDT", "USDT", "UNKNOWN")


def test_registry_loads_venues_by_name_and_builds_parsers_for_a_subscription() -> None:
    venue = load_venue("Binance")
    parser = venue.build_parser(["BTC/USDT"], [RecordKind.TRADES], rules=venue.rules(), validation=ValidationSettings(),
                                is_sample_data=False)  # fmt: skip
    assert isinstance(parser, BinanceParser) and parser.symbols == ("BTCUSDT",)
    with pytest.raises(ConfigError, match="unknown venue 'nasdaq'"):
        load_venue("nasdaq")
    with pytest.raises(ConfigError, match="invalid Binance symbol"):
        venue.build_parser(["BTC-USD"], [RecordKind.TRADES], rules=venue.rules(), validation=ValidationSettings(),
                           is_sample_data=False)  # fmt: skip


def test_fixture_files_exist() -> None:
    assert {Path(c["file"]).name for c in EXPECTED} <= {p.name for p in BINANCE.iterdir()}


def _session_frames() -> list[RawFrame]:
    from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording

    return [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_SESSION)]


def test_a_clean_batch_parses_in_one_pass_exactly_as_frame_by_frame() -> None:
    """The whole recorded session (trades and bookTicker interleaved; depth frames left out, as the
    subscription has none): the one-pass path takes it, with the same rows as frame by frame."""
    frames = [f for f in _session_frames() if b"@depth" not in f.payload[:40]]
    parser = binance_parser(["BTCUSDT", "ETHUSDT"], kinds=(RecordKind.TRADES, RecordKind.QUOTES))
    for start in range(0, len(frames), 20_000):
        batch = frames[start : start + 20_000]
        clean = parser._parse_clean(batch)
        assert clean is not None
        each = parser._parse_each(batch)
        assert clean.rejected == each.rejected == [] and clean.control == each.control == 0
        assert clean.records.keys() == each.records.keys() == {RecordKind.TRADES, RecordKind.QUOTES}
        for kind in clean.records:
            assert clean.records[kind].equals(each.records[kind]), kind


@pytest.mark.parametrize(
    "odd",
    [
        b'{"result":null,"id":1}',  # a control reply
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate"}}',  # a stream not subscribed
        b'{"stream":"btcusdt@trade","data":{"e":"trade"}}',  # a trade missing its fields
        b'{"stream":"btcusdt@trade"}',  # no data
        b'{"stream":"btcusdt@trade","data":[1,2]}',  # data not an object
        b'{"stream":["btcusdt@trade"],"data":{}}',  # a stream name that is not a string
        b"not json",
    ],
)
def test_one_odd_frame_sends_the_batch_frame_by_frame_and_the_others_still_parse(
    bundled_frames: list[RawFrame], odd: bytes
) -> None:
    parser = binance_parser(["BTCUSDT", "ETHUSDT"])
    batch = [*bundled_frames[:50], RawFrame(odd, bundled_frames[50].received_at_us), *bundled_frames[50:100]]
    assert parser._parse_clean(batch) is None
    parsed = parser.parse(batch)
    assert parsed.rows(RecordKind.TRADES) == 100
    assert len(parsed.rejected) + parsed.control == 1
