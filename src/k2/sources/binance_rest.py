"""Binance spot REST market data for backfill: wire struct, request weights, pure trade parser.

``GET /api/v3/historicalTrades?symbol=&fromId=&limit=`` (limit <= 1000) answers a JSON array of::

    {"id": 3735683259, "price": "61148.01000000", "qty": "0.00010000", "quoteQty": "6.11480100",
     "time": 1723161255343, "isBuyerMaker": true, "isBestMatch": true}

:func:`parse_historical_trades` turns that body into the same canonical rows the WebSocket parser
produces (same message ids, prices, sides, timestamps), with ``vendor_data`` telling them apart:
``backfilled = "true"`` and ``quote_quantity`` instead of the stream's event fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import SourceError
from k2.sources.base import ParsedBatch, RawFrame
from k2.sources.binance import BinanceAdapter, BinanceTrade, _map_from_columns
from k2.sources.symbols import SymbolInfo

HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
AGG_TRADES_PATH = "/api/v3/aggTrades"
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
PING_PATH = "/api/v3/ping"
MAX_TRADES_LIMIT = 1000

# Request weights and the IP limit as documented for Binance spot REST (general info: "LIMITS",
# market-data endpoints); weights are per request, whatever the limit parameter.
REQUEST_WEIGHT = {
    HISTORICAL_TRADES_PATH: 25,
    AGG_TRADES_PATH: 4,
    EXCHANGE_INFO_PATH: 20,
    PING_PATH: 1,
}
REQUEST_WEIGHT_PER_MINUTE = 6000
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"

_REST_VENDOR_KEYS = (
    "is_buyer_maker",
    "trade_time",
    "base_asset",
    "quote_asset",
    "is_best_match",
    "quote_quantity",
    "backfilled",
)


class BinanceRestTrade(msgspec.Struct, frozen=True):
    """One element of a ``historicalTrades`` (or ``trades``) response, Binance's field names."""

    id: int
    price: str
    qty: str
    quoteQty: str
    time: int
    isBuyerMaker: bool
    isBestMatch: bool | None = None


_decoder = msgspec.json.Decoder(list[BinanceRestTrade])
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class RestTrades:
    """A parsed response: canonical rows (maybe empty), the ids it held, and rejected trades."""

    batch: pa.RecordBatch | None
    ids: list[int]
    parsed: ParsedBatch


def decode_historical_trades(payload: bytes) -> list[BinanceRestTrade]:
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SourceError(f"unexpected historicalTrades response: {exc}") from exc


def parse_historical_trades(
    payload: bytes,
    symbol: str,
    *,
    received_at_us: int,
    first_platform_sequence: int,
    is_sample_data: bool,
    symbol_info: Mapping[str, SymbolInfo] | None = None,
) -> RestTrades:
    """Canonical trade rows from a ``historicalTrades`` body (pure; times are milliseconds)."""
    rest = decode_historical_trades(payload)
    adapter = BinanceAdapter(symbol_info)
    out = ParsedBatch()
    trades = [
        BinanceTrade(e="trade", E=r.time, s=symbol, t=r.id, p=r.price, q=r.qty, T=r.time, m=r.isBuyerMaker,
                     M=r.isBestMatch)
        for r in rest
    ]  # fmt: skip
    frames = [RawFrame(_encoder.encode(r), received_at_us) for r in rest]
    quote_qty = {r.id: r.quoteQty for r in rest}
    if trades:
        trades, frames = adapter._drop_bad_numbers(trades, frames, out)
    if not trades:
        return RestTrades(None, [], out)
    batch = adapter._to_batch(
        trades, frames, first_platform_sequence=first_platform_sequence, is_sample_data=is_sample_data
    )
    n = batch.num_rows
    vendor = batch.column("vendor_data")
    lookup = {k: pc.map_lookup(vendor, k, "first") for k in ("is_buyer_maker", "trade_time", "base_asset",
                                                             "quote_asset", "is_best_match")}  # fmt: skip
    columns = [
        *lookup.values(),
        pa.array([quote_qty[t.t] for t in trades], pa.string()),
        pa.repeat("true", n),
    ]
    new_vendor = _map_from_columns(_REST_VENDOR_KEYS, columns, n).cast(vendor.type)
    index = batch.schema.get_field_index("vendor_data")
    batch = batch.set_column(index, batch.schema.field(index), new_vendor)
    return RestTrades(batch, [t.t for t in trades], out)
