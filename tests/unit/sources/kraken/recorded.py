"""The real Kraken messages of tests/fixtures/kraken, by name, and a parser for the recorded symbols."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from k2.config import ValidationSettings
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from k2.sources.kraken import KrakenParser
from k2.sources.kraken.asset_pairs import kraken_rules
from tests.conftest import FIXTURES

KRAKEN = FIXTURES / "kraken"
SNIPPETS: dict[str, str] = {
    s["name"]: s["raw"]
    for s in map(json.loads, (KRAKEN / "ws_v2_snippets_kraken-async-rs_2024-05.jsonl").read_text().splitlines())
}
REST_PAGE = (KRAKEN / "rest_trades_XBTUSDT_2025-11-10_1000.json").read_bytes()
# Receive times just after each message (the trades' own times; the tickers have none).
TRADE_SNAPSHOT_RECV_US = 1_716_813_191_000_000  # 2024-05-27T12:33:11Z, after 12:33:10.980704
TRADE_UPDATE_RECV_US = 1_716_813_792_000_000  # 2024-05-27T12:43:12Z, after 12:43:11.798009
TICKER_RECV_US = 1_716_813_000_000_000
BOTH = (RecordKind.TRADES, RecordKind.QUOTES)


def message(name: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(SNIPPETS[name])
    return decoded


def frame(name: str, received_at_us: int = TRADE_UPDATE_RECV_US) -> RawFrame:
    return RawFrame(SNIPPETS[name].encode(), received_at_us)


def parser(
    symbols: Sequence[str] = ("BTC/USD",),
    kinds: Sequence[RecordKind] = BOTH,
    *,
    is_sample_data: bool = False,
    validation: ValidationSettings | None = None,
) -> KrakenParser:
    return KrakenParser(symbols, kinds, rules=kraken_rules(), is_sample_data=is_sample_data, validation=validation)
