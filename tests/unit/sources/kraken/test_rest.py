"""Kraken's REST ``Trades`` page parser on the real 1,000-trade page: every field, exact decimals from the text,
times floored to the microsecond from their text, the cursor, error answers, and rejected rows."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.errors import SourceError
from k2.schema.kinds import RecordKind, wire_schema
from k2.sources import RejectReason
from k2.sources.columns import K2_NAMESPACE
from k2.sources.kraken.rest import ErrorClass, TradesPage, error_class, parse_trades_page, throttled_until_s
from k2.sources.symbols import Instrument
from tests.unit.sources.kraken.recorded import REST_PAGE

RECEIVED_US = 1_762_820_100_000_000  # 2025-11-11T00:15:00Z, after the page's newest trade
BTC_USDT = Instrument("BTC", "USDT")


def _parse(payload: bytes) -> TradesPage:
    return parse_trades_page(payload, "BTC/USDT", received_at_us=RECEIVED_US, instrument=BTC_USDT)


def _with_rows(rows: list[Any]) -> bytes:
    """The real page's envelope around ``rows`` (mutated real rows)."""
    return json.dumps({"error": [], "result": {"XBTUSDT": rows, "last": "1762820035982277754"}}).encode()


def _real_rows() -> list[list[Any]]:
    """The page's rows with every number kept as its text (prices are strings already; the time is a
    number, kept as a Decimal of its text)."""
    rows: list[list[Any]] = json.loads(REST_PAGE, parse_float=Decimal)["result"]["XBTUSDT"]
    return rows


def _dumps_rows(rows: list[list[Any]]) -> bytes:
    def item(x: Any) -> str:
        return format(x, "f") if isinstance(x, Decimal) else json.dumps(x)

    body = ",".join("[" + ",".join(item(x) for x in row) + "]" for row in rows)
    return b'{"error":[],"result":{"XBTUSDT":[' + body.encode() + b'],"last":"1762820035982277754"}}'


def test_the_real_page_parses_field_by_field() -> None:
    page = _parse(REST_PAGE)
    assert page.errors == () and page.last_ns == 1_762_820_035_982_277_754
    fetched = page.fetched
    assert fetched is not None and fetched.parsed.rejected == []
    assert fetched.ids == list(range(10_218_208, 10_219_208))  # consecutive, no gap (provenance checks)
    assert fetched.batch is not None and fetched.batch.schema == wire_schema(RecordKind.TRADES)
    rows = fetched.batch.to_pylist()
    assert rows[0] == {
        "message_id": str(uuid.uuid5(K2_NAMESPACE, "KRAKEN:BTC/USDT:10218208")),
        "trade_id": "10218208",
        "symbol": "BTC/USDT",
        "exchange": "KRAKEN",
        "asset_class": "crypto",
        "timestamp": datetime(2025, 11, 10, 17, 23, 53, 971744, tzinfo=UTC),  # 1762795433.9717445 floored
        "price": Decimal("105433.60000"),
        "quantity": Decimal("0.00027625"),
        "currency": "USDT",
        "side": "BUY",
        "trade_conditions": [],
        "source_sequence": 10218208,
        "ingestion_timestamp": datetime(2025, 11, 11, 0, 15, tzinfo=UTC),
        "vendor_data": [
            ("ord_type", "limit"),
            ("misc", ""),
            ("rest_time", "1762795433.9717445"),
            ("backfilled", "true"),
            ("base_asset", "BTC"),
            ("quote_asset", "USDT"),
        ],
    }
    last = rows[-1]
    assert (last["trade_id"], last["price"], last["quantity"], last["side"]) == (
        "10219207", Decimal("105899.40000"), Decimal("0.00009443"), "SELL",
    )  # fmt: skip
    assert last["timestamp"] == datetime(2025, 11, 11, 0, 13, 55, 982277, tzinfo=UTC)  # 1762820035.9822779
    assert dict(last["vendor_data"])["ord_type"] == "market"
    assert dict(last["vendor_data"])["rest_time"] == "1762820035.9822779"
    assert Counter(r["side"] for r in rows) == {"BUY": 578, "SELL": 422}
    assert Counter(dict(r["vendor_data"])["ord_type"] for r in rows) == {"limit": 591, "market": 409}
    times = [r["timestamp"] for r in rows]
    assert times == sorted(times)  # time never decreases (provenance checks)
    # Every value exactly its text: the price and volume strings, the time's text floored.
    for row, raw in zip(rows, _real_rows(), strict=True):
        assert (row["price"], row["quantity"]) == (Decimal(raw[0]), Decimal(raw[1]))
        floor_us = int(raw[2] * 1_000_000)
        assert int(row["timestamp"].timestamp() * 1_000_000) == floor_us


def test_an_error_answer_carries_its_errors() -> None:
    page = _parse(b'{"error":["EGeneral:Too many requests"]}')
    assert page == TradesPage(("EGeneral:Too many requests",))


@pytest.mark.parametrize(
    "payload",
    [
        REST_PAGE[: len(REST_PAGE) // 2],  # cut in half
        b"[]",
        b'{"result":{}}',  # no error array
        b'{"error":[],"result":{"last":"1"}}',  # no pair
        b'{"error":[],"result":{"XBTUSDT":[],"XXBTZUSD":[],"last":"1"}}',  # two pairs
        b'{"error":[],"result":{"XBTUSDT":{},"last":"1"}}',
    ],
)
def test_what_is_not_a_trades_answer_raises_source_error(payload: bytes) -> None:
    with pytest.raises(SourceError):
        _parse(payload)


@pytest.mark.parametrize(("last", "cursor"), [('"1762820035982277754"', 1762820035982277754), ('""', None),
                                              ("1762820035982277754", 1762820035982277754), ('"x"', None)])  # fmt: skip
def test_the_last_cursor(last: str, cursor: int | None) -> None:
    page = _parse(b'{"error":[],"result":{"XBTUSDT":[],"last":%s}}' % last.encode())
    assert page.last_ns == cursor and page.fetched is not None and page.fetched.ids == []


def _row_change(index: int, value: Any) -> Any:
    def change(row: list[Any]) -> None:
        row[index] = value

    return change


ROW_CASES: list[tuple[str, Any, RejectReason]] = [
    ("six elements: no trade_id (older API)", lambda r: r.pop(), RejectReason.MISSING_FIELD),
    ("not an array", lambda r: r.clear() or r.append({"price": "1"}), RejectReason.MISSING_FIELD),
    ("trade_id a string", _row_change(6, "10218208"), RejectReason.WRONG_TYPE),
    ("side x", _row_change(3, "x"), RejectReason.WRONG_TYPE),
    ("side a number", _row_change(3, 1), RejectReason.WRONG_TYPE),
    ("time a string of words", _row_change(2, "soon"), RejectReason.WRONG_TYPE),
    ("price null", _row_change(0, None), RejectReason.WRONG_TYPE),
    ("price text", _row_change(0, "abc"), RejectReason.INVALID_NUMBER),
    ("price 39 digits", _row_change(0, "1" * 39), RejectReason.INVALID_NUMBER),
    ("trade_id negative", _row_change(6, -1), RejectReason.OUT_OF_RANGE),
    ("trade_id 2^63", _row_change(6, 2**63), RejectReason.OUT_OF_RANGE),
    ("time before Kraken", _row_change(2, Decimal("1378771199.999999")), RejectReason.OUT_OF_RANGE),
    ("time in the future", _row_change(2, Decimal("1762830035.5")), RejectReason.OUT_OF_RANGE),
    ("volume zero", _row_change(1, "0.00000000"), RejectReason.NON_POSITIVE),
]


@pytest.mark.parametrize(("name", "change", "reason"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_a_bad_row_is_rejected_alone(name: str, change: Any, reason: RejectReason) -> None:
    rows = _real_rows()[:3]
    change(rows[1])
    page = _parse(_dumps_rows(rows))
    fetched = page.fetched
    assert fetched is not None and fetched.ids == [10218208, 10218210]  # its neighbours are kept
    (rejected,) = fetched.parsed.rejected
    assert rejected.reason is reason
    assert rejected.frame.received_at_us == RECEIVED_US
    assert json.loads(rejected.frame.payload, parse_float=Decimal) == rows[1]  # the row exactly


def test_a_row_with_more_elements_than_today_is_read() -> None:
    rows = _real_rows()[:1]
    rows[0].append("a later field")
    fetched = _parse(_dumps_rows(rows)).fetched
    assert fetched is not None and fetched.ids == [10218208]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("EAPI:Rate limit exceeded", ErrorClass.RATE_LIMITED),
        ("EGeneral:Too many requests", ErrorClass.RATE_LIMITED),
        ("EService: Throttled: 1762820100", ErrorClass.RATE_LIMITED),
        ("EService:Unavailable", ErrorClass.TRANSIENT),
        ("EService:Busy", ErrorClass.TRANSIENT),
        ("EGeneral:Internal error", ErrorClass.TRANSIENT),
        ("EQuery:Unknown asset pair", ErrorClass.PERMANENT),
        ("EGeneral:Invalid arguments", ErrorClass.PERMANENT),
    ],
)
def test_error_classes(error: str, kind: ErrorClass) -> None:
    assert error_class(error) is kind


def test_throttled_until() -> None:
    assert throttled_until_s("EService: Throttled: 1762820100") == 1762820100.0
    assert throttled_until_s("EService: Throttled: soon") is None
    assert throttled_until_s("EAPI:Rate limit exceeded") is None
