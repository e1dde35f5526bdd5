"""The pure REST trade parser: Binance's historicalTrades JSON -> the same canonical rows as the stream."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from k2.errors import SourceError
from k2.feed.stamp import parse_canonical
from k2.sources.base import RawFrame, RejectReason
from tests.conftest import FIXTURES, rest_trades

PAYLOAD = (FIXTURES / "binance" / "rest_historical_trades.json").read_bytes()
WS_FRAME = (
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
    b'"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)


def test_rest_trades_parse_to_canonical_rows_marked_backfilled() -> None:
    got = rest_trades(PAYLOAD, "BTCUSDT", received_at_us=1_800_000_000_000_000, first=7, sample=False)
    assert got.ids == [3735683259, 3735683260]
    (bad,) = got.parsed.rejected
    assert bad.reason is RejectReason.NON_POSITIVE and b'"id":3735683261' in bad.frame.payload
    assert got.batch is not None
    rows = got.batch.to_pylist()
    assert rows[1] == {
        "message_id": rows[1]["message_id"],
        "trade_id": "3735683260",
        "symbol": "BTCUSDT",
        "exchange": "BINANCE",
        "asset_class": "crypto",
        "timestamp": datetime(2024, 8, 8, 23, 54, 15, 343000, tzinfo=UTC),
        "price": Decimal("61837.640000000000"),
        "quantity": Decimal("0.000100000000"),
        "currency": "USDT",
        "side": "BUY",
        "trade_conditions": [],
        "source_sequence": 3735683260,
        "ingestion_timestamp": datetime(2027, 1, 15, 8, 0, tzinfo=UTC),
        "platform_sequence": 8,
        "vendor_data": [
            ("is_buyer_maker", "false"),
            ("trade_time", "1723161255343"),
            ("base_asset", "BTC"),
            ("quote_asset", "USDT"),
            ("is_best_match", "true"),
            ("quote_quantity", "6.18376400"),
            ("backfilled", "true"),
        ],
        "is_sample_data": False,
        "instrument": "BTC/USDT",
    }


def test_rest_row_equals_the_stream_row_of_the_same_trade_apart_from_vendor_data() -> None:
    received = 1_723_161_256_000_000  # after the trades (a receive time before them would be out of range)
    rest = rest_trades(PAYLOAD, "BTCUSDT", received_at_us=received, first=1, sample=True)
    ws = parse_canonical(
        "binance", [RawFrame(WS_FRAME, received)], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    assert rest.batch is not None
    rest_row = rest.batch.to_pylist()[0]
    ws_row = next(iter(ws.records.values())).to_pylist()[0]
    assert rest.batch.schema == next(iter(ws.records.values())).schema
    assert {k: v for k, v in rest_row.items() if k != "vendor_data"} == {
        k: v for k, v in ws_row.items() if k != "vendor_data"
    }
    assert dict(rest_row["vendor_data"])["backfilled"] == "true"
    assert "backfilled" not in dict(ws_row["vendor_data"])


def test_empty_and_malformed_responses() -> None:
    empty = rest_trades(b"[]", "BTCUSDT", received_at_us=0, first=1, sample=False)
    assert empty.batch is None and empty.ids == []
    with pytest.raises(SourceError, match="unexpected historicalTrades response"):
        rest_trades(b'{"code":-1121}', "BTCUSDT", received_at_us=0, first=1, sample=False)
