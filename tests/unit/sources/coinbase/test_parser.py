"""The Coinbase parser on real recorded messages: every field asserted, every reject reason exercised."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.config import ValidationSettings
from k2.emulator.recording import BUNDLED_COINBASE_SESSION, read_recording
from k2.errors import ConfigError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame, RejectReason, load_venue
from k2.sources.coinbase import CoinbaseParser, CoinbaseSymbols
from k2.sources.columns import K2_NAMESPACE
from k2.sources.symbols import Instrument
from tests.conftest import FIXTURES

COINBASE = FIXTURES / "coinbase"
EXPECTED: dict[str, Any] = json.loads((COINBASE / "expected.json").read_text())
LINES = (COINBASE / EXPECTED["file"]).read_bytes().splitlines()
SNIPPETS = {
    s["name"]: s["raw"].encode()
    for s in map(json.loads, (COINBASE / "exchange_ws_protocol_snippets.jsonl").read_text().splitlines())
}
PRODUCTS = (
    "SKL-USD",
    "SKL-BTC",
    "BAND-GBP",
    "NMR-EUR",
    "BAND-BTC",
    "YFI-BTC",
    "DASH-BTC",
    "NU-GBP",
    "CRV-EUR",
    "SKL-GBP",
)
BOTH = (RecordKind.TRADES, RecordKind.QUOTES)
RECEIVED_US = 1_618_677_817_129_516  # the recorded receive time of the match on line 7

MATCH = LINES[6]  # SKL-BTC 280232, maker side sell
TICKER = LINES[7]  # the ticker of that match


def _frame(case: dict[str, Any]) -> RawFrame:
    return RawFrame(LINES[case["line"] - 1], case["received_at_us"])


def _parse(frames: list[RawFrame], kinds: tuple[RecordKind, ...] = BOTH, **kwargs: Any) -> ParsedBatch:
    return parse_canonical("coinbase", frames, symbols=PRODUCTS, kinds=kinds, first_sequence=7, **kwargs)


def _session() -> list[RawFrame]:
    return [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_COINBASE_SESSION)]


# --- recorded messages, field by field --------------------------------------------------------------------
@pytest.mark.parametrize("case", EXPECTED["trades"], ids=lambda c: f"line {c['line']}")
def test_recorded_match_parses_to_expected_values(case: dict[str, Any]) -> None:
    parsed = _parse([_frame(case)], is_sample_data=False, validation=ValidationSettings(max_age_s=None))
    assert parsed.rejected == [] and parsed.control == 0 and RecordKind.QUOTES not in parsed.records
    (row,) = parsed.records[RecordKind.TRADES].to_pylist()
    assert row["message_id"] == str(uuid.uuid5(K2_NAMESPACE, f"COINBASE:{case['symbol']}:{case['trade_id']}"))
    for name in ("trade_id", "symbol", "exchange", "asset_class", "currency", "side", "trade_conditions"):
        assert row[name] == case[name], name
    assert row["source_sequence"] == case["source_sequence"]
    assert row["timestamp"] == datetime.fromisoformat(case["timestamp"])
    assert row["timestamp"].utcoffset().total_seconds() == 0
    assert row["ingestion_timestamp"] == datetime.fromisoformat(case["ingestion_timestamp"])
    assert row["price"] == Decimal(case["price"]) and isinstance(row["price"], Decimal)
    assert row["quantity"] == Decimal(case["quantity"])
    assert dict(row["vendor_data"]) == case["vendor_data"]
    assert row["platform_sequence"] == 7 and row["is_sample_data"] is False


@pytest.mark.parametrize("case", EXPECTED["quotes"], ids=lambda c: f"line {c['line']}")
def test_recorded_ticker_parses_to_expected_values(case: dict[str, Any]) -> None:
    parsed = _parse([_frame(case)], is_sample_data=True)
    assert parsed.rejected == [] and RecordKind.TRADES not in parsed.records
    (row,) = parsed.records[RecordKind.QUOTES].to_pylist()
    tag = f"COINBASE:{case['symbol']}:quote:{case['source_sequence']}"
    assert row["message_id"] == str(uuid.uuid5(K2_NAMESPACE, tag))
    for name in ("symbol", "instrument", "exchange", "asset_class", "currency", "source_sequence"):
        assert row[name] == case[name], name
    assert row["timestamp"] == datetime.fromisoformat(case["timestamp"])
    assert row["ingestion_timestamp"] == datetime.fromisoformat(case["ingestion_timestamp"])
    for name in ("bid_price", "ask_price"):
        assert row[name] == Decimal(case[name]) and isinstance(row[name], Decimal), name
    assert row["bid_size"] is None and row["ask_size"] is None  # the 2021 ticker sent no sizes
    assert dict(row["vendor_data"]) == case["vendor_data"]
    assert row["platform_sequence"] == 7 and row["is_sample_data"] is True


def test_the_whole_fixture_file_ends_as_rows_control_and_one_unsubscribed_channel() -> None:
    frames = [RawFrame(line, RECEIVED_US) for line in LINES]
    parsed = _parse(frames)
    assert (parsed.rows(RecordKind.TRADES), parsed.rows(RecordKind.QUOTES), parsed.control) == (4, 2, 1)
    ((reject),) = parsed.rejected
    assert reject.reason is RejectReason.UNSUBSCRIBED and reject.frame.payload == LINES[5]
    assert "level2" in reject.detail


def test_whole_recorded_session_parses_exactly() -> None:
    frames = _session()
    parsed = _parse(frames, is_sample_data=True)
    messages = [json.loads(f.payload) for f in frames]
    types = Counter(m["type"] for m in messages)
    assert types == {
        "l2update": 9_719,
        "ticker": 107,
        "match": 97,
        "snapshot": 10,
        "last_match": 10,
        "subscriptions": 3,
    }
    assert parsed.control == 3  # the subscriptions acks
    assert Counter(r.reason for r in parsed.rejected) == {RejectReason.UNSUBSCRIBED: 9_729}  # level2: not asked for
    trades = parsed.records[RecordKind.TRADES].to_pylist()
    by_product: dict[str, list[int]] = {}
    for row in trades:
        by_product.setdefault(row["symbol"], []).append(row["source_sequence"])
    # Recording README: ids strictly consecutive per product, these exact ranges, in wire order.
    assert by_product["SKL-USD"] == list(range(1_568_267, 1_568_320))
    assert by_product["DASH-BTC"] == list(range(923_560, 923_576))
    assert sum(len(v) for v in by_product.values()) == 107 and len(by_product) == 10
    matches = [m for m in messages if m["type"] in ("match", "last_match")]
    for row, m in zip(trades, matches, strict=True):
        assert (row["price"], row["quantity"]) == (Decimal(m["price"]), Decimal(m["size"]))
        assert row["side"] == {"sell": "BUY", "buy": "SELL"}[m["side"]]
    assert Counter(r["side"] for r in trades) == {"BUY": 53, "SELL": 54}  # 53 recorded matches have maker side sell
    quotes = parsed.records[RecordKind.QUOTES].to_pylist()
    tickers = [m for m in messages if m["type"] == "ticker"]
    assert [(q["symbol"], q["source_sequence"], q["bid_price"], q["ask_price"]) for q in quotes] == [
        (t["product_id"], t["sequence"], Decimal(t["best_bid"]), Decimal(t["best_ask"])) for t in tickers
    ]
    assert len({r["message_id"] for r in trades}) == 107 and len({q["message_id"] for q in quotes}) == 107


def test_each_ticker_names_the_taker_side_opposite_to_its_match() -> None:
    """The recorded evidence for the side mapping: a ticker's ``side`` is the taker's, and it is the
    opposite of the ``side`` of the match with the same sequence, which is therefore the maker's."""
    messages = [json.loads(f.payload) for f in _session()]
    matches = {(m["product_id"], m["sequence"]): m for m in messages if m["type"] in ("match", "last_match")}
    tickers = [m for m in messages if m["type"] == "ticker"]
    assert len(tickers) == 107
    assert all(matches[(t["product_id"], t["sequence"])]["side"] != t["side"] for t in tickers)
    parsed = _parse(_session(), is_sample_data=True)
    taker = {r["source_sequence"]: r["side"] for r in parsed.records[RecordKind.TRADES].to_pylist()}
    quotes = parsed.records[RecordKind.QUOTES].to_pylist()
    assert all(taker[int(dict(q["vendor_data"])["trade_id"])] == dict(q["vendor_data"])["taker_side"].upper()
               for q in quotes)  # fmt: skip


def test_ticker_sizes_are_stored_exactly_when_sent() -> None:
    ticker = json.loads(TICKER)
    ticker.update(best_bid_size="2865.9", best_ask_size="0.00100000")  # the newer form of the same message
    parsed = _parse([RawFrame(json.dumps(ticker).encode(), RECEIVED_US)])
    (row,) = parsed.records[RecordKind.QUOTES].to_pylist()
    assert (row["bid_size"], row["ask_size"]) == (Decimal("2865.9"), Decimal("0.00100000"))


def test_a_ticker_without_time_is_stored_with_no_venue_time() -> None:
    ticker = json.loads(TICKER)
    del ticker["time"]
    parsed = _parse([RawFrame(json.dumps(ticker).encode(), RECEIVED_US)])
    (row,) = parsed.records[RecordKind.QUOTES].to_pylist()
    assert row["timestamp"] is None and row["source_sequence"] == 177_100_030


# --- control replies ----------------------------------------------------------------------------------
def test_acks_and_heartbeats_of_subscribed_products_are_control() -> None:
    frames = [RawFrame(SNIPPETS[n], RECEIVED_US) for n in ("subscriptions_ack", "subscriptions_ack_empty", "heartbeat")]
    parsed = parse_canonical("coinbase", frames, symbols=["ETH-EUR"], kinds=BOTH)
    assert parsed.rejected == [] and parsed.control == 3 and parsed.records == {}


def test_a_heartbeat_of_another_product_is_unsubscribed_and_an_error_reply_is_quarantined() -> None:
    frames = [RawFrame(SNIPPETS["heartbeat"], RECEIVED_US), RawFrame(SNIPPETS["error_unsubscribe"], RECEIVED_US)]
    parsed = _parse(frames)
    assert [r.reason for r in parsed.rejected] == [RejectReason.UNSUBSCRIBED, RejectReason.VENUE_ERROR]
    assert parsed.rejected[1].detail == "venue error: 'Failed to unsubscribe': 'No channels provided'"


# --- every reject reason, from mutated real messages ----------------------------------------------------
def _mutated(base: bytes, **fields: Any) -> bytes:
    message = json.loads(base)
    for name, value in fields.items():
        if value is _DELETE:
            message.pop(name)
        else:
            message[name] = value
    return json.dumps(message).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (MATCH[: len(MATCH) // 2], RejectReason.MALFORMED_JSON),
        (b"not json at all", RejectReason.MALFORMED_JSON),
        (b"[" + MATCH + b"]", RejectReason.WRONG_TYPE),
        (b'"match"', RejectReason.WRONG_TYPE),
        (_mutated(MATCH, type=_DELETE), RejectReason.MISSING_FIELD),
        (_mutated(MATCH, price=_DELETE), RejectReason.MISSING_FIELD),
        (_mutated(MATCH, product_id=_DELETE), RejectReason.MISSING_FIELD),
        (_mutated(TICKER, best_ask=_DELETE), RejectReason.MISSING_FIELD),
        (_mutated(MATCH, type=["match"]), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, trade_id="280232"), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, price=0.00001305), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, side="taker"), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, product_id=7), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, time="yesterday"), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, time="2021-02-30T16:43:37.089723Z"), RejectReason.WRONG_TYPE),
        (_mutated(TICKER, time="1618677817"), RejectReason.WRONG_TYPE),
        (_mutated(TICKER, best_bid_size=3), RejectReason.WRONG_TYPE),
        (_mutated(MATCH, price="abc"), RejectReason.INVALID_NUMBER),
        (_mutated(MATCH, size="1e3"), RejectReason.INVALID_NUMBER),
        (_mutated(MATCH, price="0.0000000000001"), RejectReason.INVALID_NUMBER),
        (_mutated(TICKER, best_bid="NaN"), RejectReason.INVALID_NUMBER),
        (_mutated(TICKER, best_ask_size=" 1"), RejectReason.INVALID_NUMBER),
        (_mutated(MATCH, trade_id=-1), RejectReason.OUT_OF_RANGE),
        (_mutated(MATCH, trade_id=2**63), RejectReason.OUT_OF_RANGE),
        (_mutated(MATCH, sequence=-177100030), RejectReason.OUT_OF_RANGE),
        (_mutated(MATCH, time="1970-01-01T00:00:00Z"), RejectReason.OUT_OF_RANGE),
        (_mutated(MATCH, time="2014-12-31T23:59:59.999999Z"), RejectReason.OUT_OF_RANGE),  # before Coinbase opened
        (_mutated(MATCH, time="2021-04-17T16:48:37.129517Z"), RejectReason.OUT_OF_RANGE),  # 300 s + 1 µs ahead
        (_mutated(MATCH, time="10000-01-01T00:00:00Z"), RejectReason.OUT_OF_RANGE),
        (_mutated(TICKER, sequence=2**64), RejectReason.OUT_OF_RANGE),
        (_mutated(TICKER, trade_id=-5), RejectReason.OUT_OF_RANGE),
        (_mutated(TICKER, time="2121-04-17T16:43:37.089723Z"), RejectReason.OUT_OF_RANGE),
        (_mutated(MATCH, price="-0.00001305"), RejectReason.NON_POSITIVE),
        (_mutated(MATCH, size="0"), RejectReason.NON_POSITIVE),
        (_mutated(TICKER, best_bid="0.00000000"), RejectReason.NON_POSITIVE),
        (_mutated(TICKER, best_bid_size="0", best_ask_size="1"), RejectReason.NON_POSITIVE),
        (_mutated(TICKER, best_bid="0.00001305"), RejectReason.CROSSED_BOOK),  # bid == ask: locked
        (_mutated(TICKER, best_bid="0.00001305", best_ask="0.00001303"), RejectReason.CROSSED_BOOK),
        (_mutated(MATCH, type="received"), RejectReason.UNSUBSCRIBED),  # the `full` channel
        (_mutated(MATCH, product_id="BTC-USD"), RejectReason.UNSUBSCRIBED),
        (_mutated(TICKER, product_id="XK2SKL-BTC"), RejectReason.UNSUBSCRIBED),
        (LINES[5], RejectReason.UNSUBSCRIBED),  # a real l2update
        (_mutated(MATCH, type="kline"), RejectReason.UNKNOWN_EVENT),
        (b'{"type":"error","message":"Failed to subscribe","reason":"BTC-XXX is not a valid product"}',
         RejectReason.VENUE_ERROR),
    ],
)  # fmt: skip
def test_bad_messages_are_rejected_with_reason_and_good_ones_kept(payload: bytes, reason: RejectReason) -> None:
    good = RawFrame(MATCH, RECEIVED_US)
    bad = RawFrame(payload, RECEIVED_US)
    parsed = _parse([good, bad, RawFrame(TICKER, RECEIVED_US)], is_sample_data=False)
    assert [(r.reason, r.frame) for r in parsed.rejected] == [(reason, bad)]
    assert parsed.rejected[0].detail
    assert parsed.rows(RecordKind.TRADES) == 1 and parsed.rows(RecordKind.QUOTES) == 1
    assert parsed.records[RecordKind.TRADES].column("trade_id").to_pylist() == ["280232"]


def test_live_frames_older_than_max_age_are_out_of_range_but_replayed_ones_are_kept() -> None:
    match_time_us = 1_618_677_817_089_723  # 2021-04-17T16:43:37.089723Z
    at_limit = RawFrame(MATCH, match_time_us + 3_600_000_000)  # received 1 h after the match: kept
    beyond = RawFrame(MATCH, match_time_us + 3_600_000_001)
    assert _parse([at_limit], is_sample_data=False).rows(RecordKind.TRADES) == 1
    live = _parse([beyond], is_sample_data=False)
    assert [r.reason for r in live.rejected] == [RejectReason.OUT_OF_RANGE]
    assert _parse([beyond], is_sample_data=True).rows(RecordKind.TRADES) == 1


def test_a_trades_only_subscription_rejects_tickers_as_unsubscribed() -> None:
    parsed = _parse([RawFrame(MATCH, RECEIVED_US), RawFrame(TICKER, RECEIVED_US)], kinds=(RecordKind.TRADES,))
    assert parsed.rows(RecordKind.TRADES) == 1 and [r.reason for r in parsed.rejected] == [RejectReason.UNSUBSCRIBED]


# --- the subscription ---------------------------------------------------------------------------------
def test_one_connection_and_one_subscribe_naming_each_channel_with_its_products() -> None:
    venue = load_venue("coinbase")
    parser = venue.build_parser(["btc-usd", "ETH/USD", "BTC-USD"], BOTH, rules=venue.rules(),
                                validation=ValidationSettings(), is_sample_data=False)  # fmt: skip
    assert isinstance(parser, CoinbaseParser) and parser.symbols == ("BTC-USD", "ETH-USD")
    assert parser.stream_urls("wss://ws-feed.exchange.coinbase.com/") == ["wss://ws-feed.exchange.coinbase.com"]
    (message,) = parser.subscribe_messages()
    assert json.loads(message) == {
        "type": "subscribe",
        "channels": [
            {"name": "matches", "product_ids": ["BTC-USD", "ETH-USD"]},
            {"name": "ticker", "product_ids": ["BTC-USD", "ETH-USD"]},
            {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]},
        ],
    }
    trades_only = venue.build_parser(["BTC-USD"], [RecordKind.TRADES], rules=venue.rules(),
                                     validation=ValidationSettings(), is_sample_data=False)  # fmt: skip
    assert [c["name"] for c in json.loads(trades_only.subscribe_messages()[0])["channels"]] == ["matches", "heartbeat"]


def test_parser_limits() -> None:
    rules = CoinbaseSymbols()
    with pytest.raises(ConfigError, match="at least one symbol"):
        CoinbaseParser([], rules=rules)
    with pytest.raises(ConfigError, match="at most 100 Coinbase products"):
        CoinbaseParser([f"A{i}-USD" for i in range(101)], rules=rules)


@pytest.mark.parametrize(
    ("text", "native", "instrument"),
    [("BTC-USD", "BTC-USD", ("BTC", "USD")), ("btc/usd", "BTC-USD", ("BTC", "USD")),
     (" eth-eur ", "ETH-EUR", ("ETH", "EUR")), ("1INCH-USD", "1INCH-USD", ("1INCH", "USD"))],
)  # fmt: skip
def test_symbols_accept_native_and_canonical_forms(text: str, native: str, instrument: tuple[str, str]) -> None:
    rules = load_venue("coinbase").rules()
    assert rules.native(text) == native
    assert rules.instrument(native) == Instrument(*instrument)
    assert rules.instrument(native).name == "/".join(instrument)


@pytest.mark.parametrize("text", ["BTCUSD", "BTC-USD-X", "BTC_USD", "", "-USD", "BTC-", "BTC-ÜSD", "SOL-PERP-INTX"])
def test_symbols_refuse_what_is_no_coinbase_product(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid Coinbase product"):
        load_venue("coinbase").rules().native(text)
