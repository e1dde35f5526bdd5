"""Trade cursors: round trip, and anything not issued by the service refused as a QueryError."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from k2.api.models import Quote, QuotePage, Trade, TradePage, TradeWithQuote, TradeWithQuotePage
from k2.api.series import decode_cursor, encode_cursor, quotes_series, trades_series
from k2.errors import QueryError

TRADES = trades_series(Trade, TradePage)
QUOTES = quotes_series(Quote, QuotePage)
ASOF = trades_series(TradeWithQuote, TradeWithQuotePage, name="asof")
KEY = (datetime(2024, 8, 8, 23, 54, 15, 342001, tzinfo=UTC), "BINANCE", "BTCUSDT", 3735683259, "3735683259")


def _raw(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_round_trip() -> None:
    assert decode_cursor(TRADES, encode_cursor(TRADES, KEY)) == KEY
    quote_key = (KEY[0], "BINANCE", "BTCUSDT", 50093239212, "4f1c7bd0-4f4e-5b55-9b2b-6f0c1d2e3a4b")
    assert decode_cursor(QUOTES, encode_cursor(QUOTES, quote_key)) == quote_key
    assert decode_cursor(ASOF, encode_cursor(ASOF, KEY)) == KEY


def test_a_cursor_belongs_to_its_dataset() -> None:
    for issued, used in ((TRADES, QUOTES), (TRADES, ASOF), (ASOF, TRADES), (QUOTES, TRADES)):
        with pytest.raises(QueryError, match=f"not a cursor of {used.name}"):
            decode_cursor(used, encode_cursor(issued, KEY))


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !",
        _raw([1, 2]),
        _raw({"d": "quotes", "k": [1, "A", "B", 1, "1"]}),
        _raw({"d": "trades", "k": [1, "A"]}),
        _raw({"d": "trades", "k": ["x", "A", "B", 1, "1"]}),
        _raw({"d": "trades", "k": [1, "A' OR '1'='1", "B", 1, "1"]}),
        _raw({"d": "trades", "k": [True, "A", "B", 1, "1"]}),
        _raw({"d": "trades", "k": [2**70, "A", "B", 1, "1"]}),
        _raw({"d": "trades", "k": [2**62, "A", "B", 1, "1"]}),  # beyond datetime's range
    ],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(QueryError, match="invalid cursor"):
        decode_cursor(TRADES, cursor)
