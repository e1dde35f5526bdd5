"""Trade cursors: round trip, and anything not issued by the service refused as a QueryError."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from k2.api.models import Trade, TradePage
from k2.api.series import decode_cursor, encode_cursor, trades_series
from k2.errors import QueryError

TRADES = trades_series(Trade, TradePage)
KEY = (datetime(2024, 8, 8, 23, 54, 15, 342001, tzinfo=UTC), "BINANCE", "BTCUSDT", 3735683259, "3735683259")


def _raw(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_round_trip() -> None:
    assert decode_cursor(TRADES, encode_cursor(TRADES, KEY)) == KEY


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
