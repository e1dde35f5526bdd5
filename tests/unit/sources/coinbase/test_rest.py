"""Coinbase's REST page parser on the real 100-trade page, and the cursor of each page K2 asks for."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.errors import SourceError
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame, RejectReason
from k2.sources.coinbase.rest import page_params, parse_trades_page, trades_path
from k2.sources.columns import K2_NAMESPACE
from k2.sources.symbols import Instrument
from k2.sources.venue import FetchedTrades
from tests.conftest import FIXTURES

PAGE_BYTES = (FIXTURES / "coinbase" / "exchange_rest_trades_BTC-EUR_2020-02-17.json").read_bytes()
PAGE: list[dict[str, Any]] = json.loads(PAGE_BYTES)
RECEIVED_US = 1_581_924_300_000_000  # 2020-02-17T07:25:00Z, just after the page was taken
BTC_EUR = Instrument("BTC", "EUR")


def _parse(payload: bytes) -> FetchedTrades:
    return parse_trades_page(payload, "BTC-EUR", received_at_us=RECEIVED_US, instrument=BTC_EUR)


def test_the_real_page_parses_to_100_exact_trades_oldest_first() -> None:
    got = _parse(PAGE_BYTES)
    assert got.parsed.rejected == [] and got.batch is not None
    assert got.ids == list(range(24_169_618, 24_169_718))
    rows = got.batch.to_pylist()
    assert [r["trade_id"] for r in rows] == [str(t["trade_id"]) for t in reversed(PAGE)]
    for row, t in zip(rows, reversed(PAGE), strict=True):
        assert row["message_id"] == str(uuid.uuid5(K2_NAMESPACE, f"COINBASE:BTC-EUR:{t['trade_id']}"))
        assert row["source_sequence"] == t["trade_id"]
        assert (row["symbol"], row["exchange"], row["asset_class"], row["currency"]) == (
            "BTC-EUR", "COINBASE", "crypto", "EUR"
        )  # fmt: skip
        assert row["price"] == Decimal(t["price"]) and row["quantity"] == Decimal(t["size"])
        assert row["timestamp"] == datetime.fromisoformat(t["time"].replace("Z", "+00:00"))
        assert row["side"] == ("BUY" if t["side"] == "sell" else "SELL")
        assert row["trade_conditions"] == []
        assert dict(row["vendor_data"]) == {
            "maker_side": t["side"], "base_asset": "BTC", "quote_asset": "EUR", "backfilled": "true"
        }  # fmt: skip
        assert row["ingestion_timestamp"] == datetime.fromisoformat("2020-02-17T07:25:00+00:00")
    assert Counter(r["side"] for r in rows) == {"BUY": 63, "SELL": 37}  # maker sides: sell 63, buy 37


def test_the_newest_and_oldest_rows_field_by_field() -> None:
    rows = _parse(PAGE_BYTES).batch.to_pylist()  # type: ignore[union-attr]
    oldest, newest = rows[0], rows[-1]
    # {"time": "2020-02-17T07:13:06.596Z", "trade_id": 24169618, "price": "9051.05000000", "size": "0.00203487",
    #  "side": "sell"} and {"time": "2020-02-17T07:23:16.353Z", "trade_id": 24169717, "price": "9042.88000000",
    #  "size": "0.00846511", "side": "sell"}
    assert (oldest["trade_id"], oldest["price"], oldest["quantity"], oldest["side"]) == (
        "24169618", Decimal("9051.05"), Decimal("0.00203487"), "BUY"
    )  # fmt: skip
    assert str(oldest["timestamp"]) == "2020-02-17 07:13:06.596000+00:00"
    assert (newest["trade_id"], newest["price"], newest["quantity"]) == (
        "24169717", Decimal("9042.88"), Decimal("0.00846511")
    )  # fmt: skip
    assert str(newest["timestamp"]) == "2020-02-17 07:23:16.353000+00:00"
    short = next(r for r, t in zip(rows, reversed(PAGE), strict=True) if t["time"] == "2020-02-17T07:16:30.2Z")
    assert str(short["timestamp"]) == "2020-02-17 07:16:30.200000+00:00"  # "…:30.2Z": trailing zeros dropped


def test_rest_and_stream_rows_of_one_trade_agree() -> None:
    """A backfilled trade is the trade the stream would have delivered: same id, values and side."""
    match = {"type": "match", "trade_id": PAGE[0]["trade_id"], "maker_order_id": "m", "taker_order_id": "t",
             "side": PAGE[0]["side"], "size": PAGE[0]["size"], "price": PAGE[0]["price"], "product_id": "BTC-EUR",
             "sequence": 1, "time": PAGE[0]["time"]}  # fmt: skip
    from k2.feed.stamp import parse_canonical

    stream = parse_canonical("coinbase", [RawFrame(json.dumps(match).encode(), RECEIVED_US)], symbols=["BTC-EUR"])
    (live,) = stream.records[RecordKind.TRADES].to_pylist()
    rest = _parse(PAGE_BYTES).batch.to_pylist()[-1]  # type: ignore[union-attr]
    for name in ("message_id", "trade_id", "timestamp", "price", "quantity", "side", "source_sequence", "currency"):
        assert live[name] == rest[name], name


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"price": "abc"}, RejectReason.INVALID_NUMBER),
        ({"size": "-0.1"}, RejectReason.NON_POSITIVE),
        ({"trade_id": -1}, RejectReason.OUT_OF_RANGE),
        ({"time": "2009-01-03T18:15:05Z"}, RejectReason.OUT_OF_RANGE),
        ({"time": "2020-02-17 07:23:16"}, RejectReason.WRONG_TYPE),
        ({"trade_id": "24169717"}, RejectReason.WRONG_TYPE),
        ({"side": "SELL"}, RejectReason.WRONG_TYPE),
        ({"price": None}, RejectReason.WRONG_TYPE),
    ],
)
def test_a_bad_element_is_rejected_alone(change: dict[str, Any], reason: RejectReason) -> None:
    page = [dict(t) for t in PAGE]
    page[3].update(change)
    got = _parse(json.dumps(page).encode())
    assert [r.reason for r in got.parsed.rejected] == [reason]
    assert json.loads(got.parsed.rejected[0].frame.payload) == page[3]
    assert len(got.ids) == 99 and PAGE[3]["trade_id"] not in got.ids


def test_a_missing_field_and_a_non_object_element() -> None:
    page: list[Any] = [dict(t) for t in PAGE[:3]]
    del page[0]["size"]
    page[1] = "24169716"
    got = _parse(json.dumps(page).encode())
    assert [r.reason for r in got.parsed.rejected] == [RejectReason.WRONG_TYPE, RejectReason.MISSING_FIELD]
    assert got.ids == [PAGE[2]["trade_id"]]


@pytest.mark.parametrize("body", [b'{"message":"NotFound"}', PAGE_BYTES[:500], b"", b"[" * 100_000])
def test_a_body_that_is_no_array_is_a_source_error(body: bytes) -> None:
    with pytest.raises(SourceError, match="unexpected"):
        _parse(body)


def test_an_empty_page_is_no_rows() -> None:
    got = _parse(b"[]")
    assert got.batch is None and got.ids == [] and got.parsed.rejected == []


def test_page_cursors_walk_a_gap_oldest_first() -> None:
    """``after=X`` answers the ids below X: K2 asks ``after = from + n`` with ``limit = n``."""
    assert trades_path("BTC-USD") == "/products/BTC-USD/trades"
    assert page_params(100, 104, 1000) == {"after": "105", "limit": "5"}
    assert page_params(100, 5_000, 1000) == {"after": "1100", "limit": "1000"}
    assert page_params(1100, 5_000, 1000) == {"after": "2100", "limit": "1000"}
    assert page_params(7, 7, 1000) == {"after": "8", "limit": "1"}
