"""AGGTEST: a venue defined outside ``k2.sources``, by tests, in this module alone (docs/venues.md, "Adding a
venue"). It publishes real Binance aggregate trades (``<symbol>@aggTrade``, recorded in
``tests/fixtures/aggtrade/``) as its trades: aggregate ids are consecutive per symbol, so its trade ids get
sequence tracking like any venue's. It has no REST side (no backfill) and speaks Binance's combined-stream
protocol, so the emulator serves it with :class:`k2.emulator.binance.BinanceProtocol` and this recording.

It is the second venue of the several-venues tests (``tests/integration/test_multivenue.py``): with Binance
it shares the canonical instruments BTC/USDT and ETH/USDT, under the same venue symbols but its own exchange.
Call :func:`register` before using it (a subprocess: ``python -c "import tests.aggtest as a; a.main()" ...``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame, Rejected, RejectReason, register_venue
from k2.sources.columns import UTC_US, canonical_trades, exact_decimals, map_from_columns
from k2.sources.symbols import Instrument
from k2.sources.venue import ConnectionLimits, SymbolRules, Venue
from tests.conftest import FIXTURES

RECORDING = FIXTURES / "aggtrade" / "aggtrade_ws_btcusdt_ethusdt_dotusdt_2021-04-04.jsonl"


# --- the whole venue definition -----------------------------------------------------------------------
class AggTradeParser:
    """``{"stream": "btcusdt@aggTrade", "data": {"a": id, "p": "price", "q": "qty", "T": ms, "m": bool}}``."""

    def __init__(self, symbols: Sequence[str], kinds: Sequence[RecordKind], *, rules: SymbolRules, **_: Any) -> None:
        self.symbols, self.kinds, self.rules = tuple(symbols), tuple(kinds), rules

    def stream_urls(self, base_url: str) -> list[str]:
        return [f"{base_url}/stream?streams=" + "/".join(f"{s.lower()}@aggTrade" for s in self.symbols)]

    def subscribe_messages(self) -> list[str]:
        return []

    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        out, rows = ParsedBatch(), []
        for frame in frames:
            try:
                d = json.loads(frame.payload)["data"]
                rows.append((d["s"], int(d["a"]), d["p"], d["q"], int(d["T"]), bool(d["m"]), frame.received_at_us))
            except (ValueError, KeyError, TypeError) as exc:
                out.rejected.append(Rejected(frame, RejectReason.MALFORMED_JSON, str(exc)))
        if rows:
            s, ids, p, q, t, m, recv = (list(c) for c in zip(*rows, strict=True))
            (price, _), (qty, _) = exact_decimals(p), exact_decimals(q)
            symbols = pa.array(s, pa.string())
            out.records[RecordKind.TRADES] = canonical_trades(
                "AGGTEST", s, symbols, np.array(ids, np.int64), timestamp=pa.array(np.array(t) * 1000, UTC_US),
                price=price, quantity=qty, currency=pa.array([self.rules.instrument(x).quote for x in s]),
                side=pc.if_else(pa.array(m), "SELL", "BUY"), received_us=np.array(recv, np.int64),
                vendor_data=map_from_columns(["aggregate_id"], [pa.array(ids)], len(s)), asset_class="crypto",
            )  # fmt: skip
        return out


class UsdtSymbols:
    def native(self, text: str) -> str:
        return text.strip().upper().replace("/", "")

    def instrument(self, symbol: str) -> Instrument:
        return Instrument(symbol.removesuffix("USDT"), "USDT")


AGGTEST = Venue(
    name="aggtest", exchange="AGGTEST", asset_class="crypto", ws_url="wss://aggtest.invalid", rest_url=None,
    kinds=(RecordKind.TRADES,), streams={RecordKind.TRADES: "aggTrade"},
    limits=ConnectionLimits(max_streams_per_connection=1024, control_messages_per_s=5, max_connection_age_s=86_400),
    parser=AggTradeParser, symbol_rules=lambda metadata: UsdtSymbols(),
    emulator="k2.emulator.binance:BinanceProtocol",
)  # fmt: skip


def register() -> Venue:
    """Make AGGTEST loadable by name (``load_venue("aggtest")``, ``--venues binance,aggtest``) in this process."""
    register_venue(AGGTEST)
    return AGGTEST


def recorded() -> list[dict[str, Any]]:
    """The recorded aggregate trades (the ``data`` object of each frame), in recording order."""
    return [json.loads(line)["data"] for line in RECORDING.read_text().splitlines()]


def main() -> None:
    """``k2`` with AGGTEST registered: the real command line, for subprocess tests."""
    from k2.cli import main as k2_main

    register()
    sys.argv[0] = "k2"
    k2_main()
