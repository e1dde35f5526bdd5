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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import ValidationSettings
from k2.errors import SourceError
from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.binance import BinanceAdapter, BinanceTrade, _map_from_columns
from k2.sources.symbols import SymbolInfo
from k2.sources.validation import exact_decimal_mask

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


_page_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_trade_decoder = msgspec.json.Decoder(BinanceRestTrade)


@dataclass(frozen=True, slots=True)
class RestTrades:
    """A parsed response: canonical rows (maybe empty), the ids it held, and rejected trades."""

    batch: pa.RecordBatch | None
    ids: list[int]
    parsed: ParsedBatch


def decode_historical_trades(payload: bytes) -> list[msgspec.Raw]:
    """The elements of a ``historicalTrades`` body, undecoded; SourceError when it is not a JSON array
    (an error object, a cut-off or garbled body: the page as a whole is bad)."""
    try:
        return _page_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included; RecursionError: too deep
        raise SourceError(f"unexpected historicalTrades response: {exc}") from exc


def parse_historical_trades(
    payload: bytes,
    symbol: str,
    *,
    received_at_us: int,
    first_platform_sequence: int,
    is_sample_data: bool,
    symbol_info: Mapping[str, SymbolInfo] | None = None,
    validation: ValidationSettings | None = None,
) -> RestTrades:
    """Canonical trade rows from a ``historicalTrades`` body (pure; times are milliseconds).

    Raises SourceError only when the body is not a JSON array. Each element is checked like a stream
    frame (types, then :meth:`BinanceAdapter.trade_batch`'s range checks, ``quoteQty`` as a decimal
    too) and rejected on its own, with its verbatim JSON as the quarantined frame. Backfilled trades
    are old by design: their times get the venue's absolute bounds and the future tolerance, no
    maximum age.
    """
    adapter = BinanceAdapter([symbol], symbol_info=symbol_info, validation=validation)
    out = ParsedBatch()
    trades: list[BinanceTrade] = []
    frames: list[RawFrame] = []
    quote_qty: list[str] = []
    for raw in decode_historical_trades(payload):
        frame = RawFrame(bytes(raw), received_at_us)
        try:
            r = _trade_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = RejectReason.MISSING_FIELD if "missing required field" in str(exc) else RejectReason.WRONG_TYPE
            out.rejected.append(Rejected(frame, reason, str(exc)))
            continue
        trades.append(
            BinanceTrade(e="trade", E=r.time, s=adapter.symbols[0], t=r.id, p=r.price, q=r.qty, T=r.time,
                         m=r.isBuyerMaker, M=r.isBestMatch)
        )  # fmt: skip
        frames.append(frame)
        quote_qty.append(r.quoteQty)
    if trades:
        quote_ok = exact_decimal_mask(pa.array(quote_qty, pa.string()), PRICE_PRECISION, PRICE_SCALE)
        for i in np.flatnonzero(~quote_ok).tolist():
            detail = f"quoteQty {quote_qty[i][:40]!r} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(frames[i], RejectReason.INVALID_NUMBER, detail))
        if not quote_ok.all():
            trades = [t for t, ok in zip(trades, quote_ok, strict=True) if ok]
            frames = [f for f, ok in zip(frames, quote_ok, strict=True) if ok]
            quote_qty = [q for q, ok in zip(quote_qty, quote_ok, strict=True) if ok]
    batch, kept = adapter.trade_batch(
        trades, frames, out, window=adapter.replay_window, first_platform_sequence=first_platform_sequence,
        is_sample_data=is_sample_data,
    )  # fmt: skip
    if batch is None:
        return RestTrades(None, [], out)
    ids = batch.column("source_sequence").to_pylist()
    n = batch.num_rows
    vendor = batch.column("vendor_data")
    lookup = {k: pc.map_lookup(vendor, k, "first") for k in ("is_buyer_maker", "trade_time", "base_asset",
                                                             "quote_asset", "is_best_match")}  # fmt: skip
    columns = [
        *lookup.values(),
        pa.array(quote_qty, pa.string()).filter(pa.array(kept)),
        pa.repeat("true", n),
    ]
    new_vendor = _map_from_columns(_REST_VENDOR_KEYS, columns, n).cast(vendor.type)
    index = batch.schema.get_field_index("vendor_data")
    batch = batch.set_column(index, batch.schema.field(index), new_vendor)
    return RestTrades(batch, ids, out)
