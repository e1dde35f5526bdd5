"""The Kraken v2 parser on real recorded messages: every field asserted, exact decimals from the numbers'
text, control messages, and every reject reason exercised with mutated real messages."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.config import ValidationSettings
from k2.errors import ConfigError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame, RejectReason, load_venue
from k2.sources.columns import K2_NAMESPACE
from k2.sources.kraken import KrakenParser
from k2.sources.kraken.asset_pairs import kraken_rules
from tests.unit.sources.kraken.recorded import (
    BOTH,
    SNIPPETS,
    TICKER_RECV_US,
    TRADE_SNAPSHOT_RECV_US,
    TRADE_UPDATE_RECV_US,
    frame,
    parser,
)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _trade_rows(*frames: RawFrame, **kwargs: Any) -> list[dict[str, Any]]:
    parsed = parser(**kwargs).parse(list(frames))
    assert parsed.rejected == []
    return parsed.records[RecordKind.TRADES].to_pylist()


def _reject(
    payload: bytes | str, received_at_us: int = TRADE_UPDATE_RECV_US, **kwargs: Any
) -> tuple[RejectReason, str]:
    data = payload.encode() if isinstance(payload, str) else payload
    parsed = parser(**kwargs).parse([RawFrame(data, received_at_us)])
    assert parsed.records == {} and parsed.control == 0
    (rejected,) = parsed.rejected
    assert rejected.frame.payload == data  # quarantined exactly as received
    return rejected.reason, rejected.detail


def _mutated(name: str, change: Any) -> str:
    """A real message with ``change(message)`` applied (numbers keep their text: see _dumps)."""
    decoded = json.loads(SNIPPETS[name], parse_float=Decimal)
    change(decoded)
    return _dumps(decoded)


def _dumps(value: Any) -> str:
    """JSON with Decimals written as numbers from their own text."""
    if isinstance(value, Decimal):
        return format(value, "f") if value.as_tuple().exponent <= 0 else str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)


# --- trades --------------------------------------------------------------------------------------------
def test_the_recorded_trade_snapshot_parses_field_by_field() -> None:
    parsed = parse_canonical(
        "kraken", [frame("trade_snapshot", TRADE_SNAPSHOT_RECV_US)], symbols=["BTC/USD"], first_sequence=7,
        is_sample_data=False,
    )  # fmt: skip
    assert parsed.rejected == [] and parsed.control == 0
    first, second = parsed.records[RecordKind.TRADES].to_pylist()
    assert first == {
        "message_id": str(uuid.uuid5(K2_NAMESPACE, "KRAKEN:BTC/USD:70635251")),
        "trade_id": "70635251",
        "symbol": "BTC/USD",
        "instrument": "BTC/USD",
        "exchange": "KRAKEN",
        "asset_class": "crypto",
        "timestamp": _utc("2024-05-27T12:33:10.826003"),
        "price": Decimal("68466.9"),
        "quantity": Decimal("0.01919415"),
        "currency": "USD",
        "side": "SELL",
        "trade_conditions": [],
        "source_sequence": 70635251,
        "ingestion_timestamp": _utc("2024-05-27T12:33:11"),
        "platform_sequence": 7,
        "vendor_data": [("ord_type", "market"), ("type", "snapshot"), ("base_asset", "BTC"), ("quote_asset", "USD")],
        "is_sample_data": False,
    }
    assert second["message_id"] == str(uuid.uuid5(K2_NAMESPACE, "KRAKEN:BTC/USD:70635252"))
    assert (second["trade_id"], second["source_sequence"], second["platform_sequence"]) == ("70635252", 70635252, 8)
    assert second["timestamp"] == _utc("2024-05-27T12:33:10.980704")
    assert (second["price"], second["quantity"], second["side"]) == (Decimal("68471.2"), Decimal("0.00007723"), "BUY")
    assert dict(second["vendor_data"]) == {
        "ord_type": "limit", "type": "snapshot", "base_asset": "BTC", "quote_asset": "USD",
    }  # fmt: skip
    assert first["timestamp"].utcoffset().total_seconds() == 0


def test_the_recorded_trade_update_holds_two_trades_of_one_timestamp() -> None:
    rows = _trade_rows(frame("trade_update"))
    assert [(r["trade_id"], r["price"], r["quantity"], r["side"]) for r in rows] == [
        ("70635299", Decimal("68500.0"), Decimal("0.01044926"), "BUY"),
        ("70635300", Decimal("68500.0"), Decimal("0.00483192"), "BUY"),
    ]
    assert {r["timestamp"] for r in rows} == {_utc("2024-05-27T12:43:11.798009")}
    assert {r["ingestion_timestamp"] for r in rows} == {_utc("2024-05-27T12:43:12")}
    assert [dict(r["vendor_data"])["type"] for r in rows] == ["update", "update"]
    assert [dict(r["vendor_data"])["ord_type"] for r in rows] == ["limit", "limit"]


@pytest.mark.parametrize(
    ("price", "qty"),
    [
        ("68466.123456789012", "0.123456789012"),  # 17 significant digits: a float keeps 16
        ("12345678901234.123456789012", "98765432109876.000000000001"),  # 26 digits: a float keeps ~16
        ("0.10000000", "0.010"),  # trailing zeros; 0.1 has no binary form
        ("66450.0", "4216.61829370"),
        ("1e-8", "1.5E+3"),  # exponent forms (legal JSON) are read exactly too
    ],
)
def test_prices_and_quantities_are_exact_from_the_numbers_text(price: str, qty: str) -> None:
    real = '"price":68500.0,"qty":0.01044926'
    assert SNIPPETS["trade_update"].count(real) == 1
    text = SNIPPETS["trade_update"].replace(real, f'"price":{price},"qty":{qty}')
    row = _trade_rows(RawFrame(text.encode(), TRADE_UPDATE_RECV_US))[0]
    assert row["price"] == Decimal(price) and row["quantity"] == Decimal(qty)
    if len(Decimal(price).as_tuple().digits) > 16:  # what a float would have made of it
        assert Decimal(repr(float(price))) != Decimal(price)


def test_a_message_is_stored_whole_or_quarantined_whole() -> None:
    """One bad trade of two: neither is stored (the good one becomes a gap that REST backfill fills)."""

    def change(m: dict[str, Any]) -> None:
        m["data"][1]["price"] = Decimal("-68500.0")

    reason, detail = _reject(_mutated("trade_update", change))
    assert reason is RejectReason.NON_POSITIVE and "-68500.0" in detail


def test_snapshot_trades_are_history_update_trades_must_be_live() -> None:
    """Snapshot trades may be older than validation.max_age_s (they are history by design); an update's may not."""
    late = TRADE_SNAPSHOT_RECV_US + 2 * 3600 * 1_000_000
    validation = ValidationSettings(max_age_s=3600.0)
    assert len(_trade_rows(frame("trade_snapshot", late), validation=validation)) == 2
    stale = _mutated("trade_update", lambda m: m.update(type="update"))
    reason, detail = _reject(stale, TRADE_UPDATE_RECV_US + 2 * 3600 * 1_000_000, validation=validation)
    assert reason is RejectReason.OUT_OF_RANGE and "time=" in detail
    assert len(_trade_rows(frame("trade_update", TRADE_UPDATE_RECV_US + 7200_000_000), is_sample_data=True)) == 2


# --- quotes --------------------------------------------------------------------------------------------
def test_the_recorded_tickers_parse_field_by_field() -> None:
    frames = [frame("ticker_snapshot", TICKER_RECV_US), frame("ticker_update", TICKER_RECV_US + 1)]
    parsed = parse_canonical(
        "kraken", frames, symbols=["BTC/USD"], kinds=[RecordKind.QUOTES], first_sequence=3, is_sample_data=False
    )
    assert parsed.rejected == [] and parsed.control == 0
    snapshot, update = parsed.records[RecordKind.QUOTES].to_pylist()
    assert snapshot == {
        "message_id": str(uuid.uuid5(K2_NAMESPACE, f"KRAKEN:BTC/USD:quote:{TICKER_RECV_US}")),
        "symbol": "BTC/USD",
        "instrument": "BTC/USD",
        "exchange": "KRAKEN",
        "asset_class": "crypto",
        "timestamp": None,  # 2024 tickers carry no time
        "bid_price": Decimal("65972.8"),
        "bid_size": Decimal("0.10000000"),
        "ask_price": Decimal("65972.9"),
        "ask_size": Decimal("39.67506683"),
        "currency": "USD",
        "source_sequence": TICKER_RECV_US,  # no update id: K2's receive order
        "ingestion_timestamp": _utc("2024-05-27T12:30:00"),
        "platform_sequence": 3,
        "vendor_data": [
            ("type", "snapshot"),
            ("last", "65972.9"),
            ("volume", "4216.61829370"),
            ("vwap", "64275.2"),
            ("low", "61325.4"),
            ("high", "66450.0"),
            ("change", "4412.1"),
            ("change_pct", "7.17"),
            ("base_asset", "BTC"),
            ("quote_asset", "USD"),
        ],
        "is_sample_data": False,
    }
    assert (update["bid_price"], update["bid_size"], update["ask_price"], update["ask_size"]) == (
        Decimal("65843.7"), Decimal("12.31628629"), Decimal("65843.8"), Decimal("0.31232000"),
    )  # fmt: skip
    assert update["source_sequence"] == TICKER_RECV_US + 1 and update["platform_sequence"] == 4
    assert dict(update["vendor_data"])["type"] == "update"
    assert dict(update["vendor_data"])["volume"] == "4182.59447976"  # the text, trailing zeros and all


def test_a_ticker_timestamp_when_present_becomes_the_quote_time() -> None:
    text = _mutated("ticker_update", lambda m: m["data"][0].update(timestamp="2024-05-27T12:29:59.123456Z"))
    parsed = parser().parse([RawFrame(text.encode(), TICKER_RECV_US)])
    (row,) = parsed.records[RecordKind.QUOTES].to_pylist()
    assert row["timestamp"] == _utc("2024-05-27T12:29:59.123456")


def test_a_crossed_ticker_is_quarantined_crossed_book() -> None:
    def swap(m: dict[str, Any]) -> None:
        d = m["data"][0]
        d["bid"], d["ask"] = d["ask"], d["bid"]

    reason, detail = _reject(_mutated("ticker_update", swap), TICKER_RECV_US)
    assert reason is RejectReason.CROSSED_BOOK and detail == "bid 65843.8 >= ask 65843.7"


# --- control messages ------------------------------------------------------------------------------------
def test_heartbeat_status_pong_and_acks_are_control() -> None:
    names = ["heartbeat", "status", "pong", "subscribe_ack_trade", "subscribe_ack_ticker", "subscribe_ack_book"]
    parsed = parser().parse([frame(n) for n in names])
    assert parsed.control == 6 and parsed.rejected == [] and parsed.records == {}


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("error_subscribe_unsupported_event", "Kraken refused 'subscribe': 'Unsupported event'"),
        (
            "error_ping_unsupported_field",
            "Kraken refused 'ping': \"Unsupported field: 'params' for the given msg type: ping\"",
        ),
    ],
)  # fmt: skip
def test_an_error_reply_is_quarantined_as_a_venue_error_with_krakens_text(name: str, detail: str) -> None:
    assert _reject(SNIPPETS[name]) == (RejectReason.VENUE_ERROR, detail)


def test_a_channel_never_subscribed_is_quarantined_unsubscribed() -> None:
    assert _reject(SNIPPETS["book_update"]) == (RejectReason.UNSUBSCRIBED, "channel 'book' is not subscribed")
    assert _reject(SNIPPETS["ticker_update"], kinds=[RecordKind.TRADES])[0] is RejectReason.UNSUBSCRIBED
    reason, detail = _reject(SNIPPETS["trade_update"], symbols=("ETH/USD",))
    assert (reason, detail) == (RejectReason.UNSUBSCRIBED, "symbol 'BTC/USD' is not subscribed")


# --- every reject reason, from mutated real messages -----------------------------------------------------------
def _first(field: str, value: Any) -> Any:
    def change(m: dict[str, Any]) -> None:
        m["data"][0][field] = value

    return change


def _drop(field: str) -> Any:
    def change(m: dict[str, Any]) -> None:
        del m["data"][0][field]

    return change


CASES: list[tuple[str, str, Any, RejectReason]] = [
    ("missing price", "trade_update", _drop("price"), RejectReason.MISSING_FIELD),
    ("missing trade_id", "trade_update", _drop("trade_id"), RejectReason.MISSING_FIELD),
    ("missing bid", "ticker_update", _drop("bid"), RejectReason.MISSING_FIELD),
    ("missing type", "trade_update", lambda m: m.pop("type"), RejectReason.MISSING_FIELD),
    ("missing data", "trade_update", lambda m: m.pop("data"), RejectReason.MISSING_FIELD),
    ("no channel", "trade_update", lambda m: m.pop("channel"), RejectReason.MISSING_FIELD),
    ("trade_id as a string", "trade_update", _first("trade_id", "70635299"), RejectReason.WRONG_TYPE),
    ("trade_id with a fraction", "trade_update", _first("trade_id", Decimal("70635299.5")), RejectReason.WRONG_TYPE),
    ("price null", "trade_update", _first("price", None), RejectReason.WRONG_TYPE),
    ("price an object", "trade_update", _first("price", {"v": 1}), RejectReason.WRONG_TYPE),
    ("side hold", "trade_update", _first("side", "hold"), RejectReason.WRONG_TYPE),
    (
        "timestamp without zone",
        "trade_update",
        _first("timestamp", "2024-05-27T12:43:11.798009"),
        RejectReason.WRONG_TYPE,
    ),
    ("timestamp 30 February", "trade_update", _first("timestamp", "2024-02-30T12:43:11Z"), RejectReason.WRONG_TYPE),
    ("ticker timestamp garbage", "ticker_update", _first("timestamp", "yesterday"), RejectReason.WRONG_TYPE),
    ("bid a bool", "ticker_update", _first("bid", True), RejectReason.WRONG_TYPE),
    ("data an object", "trade_update", lambda m: m.update(data=m["data"][0]), RejectReason.WRONG_TYPE),
    ("channel a list", "trade_update", lambda m: m.update(channel=["trade"]), RejectReason.WRONG_TYPE),
    ("type a number", "trade_update", lambda m: m.update(type=1), RejectReason.WRONG_TYPE),
    ("price text", "trade_update", _first("price", "not-a-number"), RejectReason.INVALID_NUMBER),
    ("price with a space", "trade_update", _first("price", " 68500.0"), RejectReason.INVALID_NUMBER),
    ("price NaN", "trade_update", _first("price", "NaN"), RejectReason.INVALID_NUMBER),
    ("price 39 digits", "trade_update", _first("price", Decimal("1" * 39)), RejectReason.INVALID_NUMBER),
    ("qty 13 decimals", "trade_update", _first("qty", Decimal("0.0000000000001")), RejectReason.INVALID_NUMBER),
    ("ask_qty 50 digits", "ticker_update", _first("ask_qty", Decimal("9" * 50)), RejectReason.INVALID_NUMBER),
    ("trade_id 2^64", "trade_update", _first("trade_id", 2**64), RejectReason.OUT_OF_RANGE),
    ("trade_id negative", "trade_update", _first("trade_id", -70635299), RejectReason.OUT_OF_RANGE),
    ("before Kraken", "trade_update", _first("timestamp", "2013-09-09T23:59:59.999999Z"), RejectReason.OUT_OF_RANGE),
    ("far future", "trade_update", _first("timestamp", "2324-05-27T12:43:11.798009Z"), RejectReason.OUT_OF_RANGE),
    ("year 9999", "ticker_update", _first("timestamp", "9999-12-31T23:59:59.999999Z"), RejectReason.OUT_OF_RANGE),
    ("price zero", "trade_update", _first("price", Decimal("0.0")), RejectReason.NON_POSITIVE),
    ("qty negative", "trade_update", _first("qty", Decimal("-0.01044926")), RejectReason.NON_POSITIVE),
    ("bid_qty zero", "ticker_update", _first("bid_qty", Decimal("0.00000000")), RejectReason.NON_POSITIVE),
    ("unknown type", "trade_update", lambda m: m.update(type="unknownEvent"), RejectReason.UNKNOWN_EVENT),
    ("unknown channel", "trade_update", lambda m: m.update(channel="trades2"), RejectReason.UNKNOWN_EVENT),
    ("foreign symbol", "trade_update", _first("symbol", "XK2BTC/USD"), RejectReason.UNSUBSCRIBED),
    ("ohlc channel", "trade_update", lambda m: m.update(channel="ohlc"), RejectReason.UNSUBSCRIBED),
]


@pytest.mark.parametrize(("name", "base", "change", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_reject_reason_from_a_mutated_real_message(
    name: str, base: str, change: Any, reason: RejectReason
) -> None:
    received = TICKER_RECV_US if base.startswith("ticker") else TRADE_UPDATE_RECV_US
    assert _reject(_mutated(base, change), received)[0] is reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (SNIPPETS["trade_update"][:100], RejectReason.MALFORMED_JSON),
        ("\xff\xfe", RejectReason.MALFORMED_JSON),
        ("[1,2]", RejectReason.WRONG_TYPE),
        ('"trade"', RejectReason.WRONG_TYPE),
        ("{}", RejectReason.MISSING_FIELD),
        ('{"method": 5}', RejectReason.WRONG_TYPE),
        ('{"method": "subscribe", "success": "yes"}', RejectReason.WRONG_TYPE),
        ("[" * 100_000 + "]" * 100_000, RejectReason.WRONG_TYPE),
        (
            '{"channel":"trade","type":"update","data":' + "[" * 100_000 + "]" * 100_000 + "}",
            RejectReason.MALFORMED_JSON,
        ),
    ],
)
def test_frames_that_are_not_kraken_messages(payload: str, reason: RejectReason) -> None:
    data = payload.encode("utf-8", "surrogateescape") if payload != "\xff\xfe" else b"\xff\xfe"
    assert _reject(data)[0] is reason


def test_an_empty_trade_snapshot_is_control() -> None:
    parsed = parser().parse([RawFrame(b'{"channel":"trade","type":"snapshot","data":[]}', TRADE_UPDATE_RECV_US)])
    assert (parsed.control, parsed.rejected, parsed.records) == (1, [], {})


# --- subscription ------------------------------------------------------------------------------------------
def test_the_parser_asks_kraken_for_exactly_its_subscription() -> None:
    p = KrakenParser(["BTC/USD", "BTC/USDT"], BOTH, rules=kraken_rules())
    assert p.stream_urls("wss://ws.kraken.com") == ["wss://ws.kraken.com/v2"]
    assert p.stream_urls("ws://127.0.0.1:9443/") == ["ws://127.0.0.1:9443/v2"]
    assert p.stream_urls("wss://ws.kraken.com/v2") == ["wss://ws.kraken.com/v2"]
    assert [json.loads(m) for m in p.subscribe_messages()] == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "BTC/USDT"], "snapshot": True},
         "req_id": 1},
        {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "BTC/USDT"],
         "event_trigger": "bbo", "snapshot": True}, "req_id": 2},
    ]  # fmt: skip


def test_the_venue_builds_the_parser_from_any_spelling() -> None:
    venue = load_venue("kraken")
    built = venue.build_parser(
        ["XBTUSD", "xbt/usdt", "XXBTZUSD"], BOTH, rules=venue.rules(), validation=ValidationSettings(),
        is_sample_data=False,
    )  # fmt: skip
    assert built.symbols == ("BTC/USD", "BTC/USDT")
    with pytest.raises(ConfigError, match="unknown Kraken pair"):
        venue.build_parser(["NOPE"], BOTH, rules=venue.rules(), validation=ValidationSettings(), is_sample_data=False)
    with pytest.raises(ConfigError, match="at most 200 symbols"):
        KrakenParser([f"A{i}/USD" for i in range(201)], BOTH, rules=kraken_rules())
