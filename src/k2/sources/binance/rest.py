"""Binance spot REST market data: endpoints, request weights, and the pure ``historicalTrades`` parser.

``GET /api/v3/historicalTrades?symbol=&fromId=&limit=`` (limit <= 1000) answers a JSON array of::

    {"id": 3735683259, "price": "61148.01000000", "qty": "0.00010000", "quoteQty": "6.11480100",
     "time": 1723161255343, "isBuyerMaker": true, "isBestMatch": true}

:func:`parse_historical_trades` turns that body into the same canonical trades the stream parser
produces (same message ids, prices, sides, timestamps), with ``vendor_data`` telling them apart:
``backfilled = "true"`` and ``quote_quantity`` instead of the stream's event fields. Each element is
checked like a stream frame and rejected on its own (its exact JSON is the quarantined frame);
backfilled trades are old by design, so their times get no maximum age.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import ValidationSettings
from k2.errors import SourceError
from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.binance import trades
from k2.sources.binance.wire import LAUNCH_US
from k2.sources.columns import exact_decimals, map_from_columns
from k2.sources.symbols import Instrument
from k2.sources.validation import time_windows
from k2.sources.venue import FetchedTrades

HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
AGG_TRADES_PATH = "/api/v3/aggTrades"
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
PING_PATH = "/api/v3/ping"
MAX_TRADES_LIMIT = 1000

# Request weights and the IP limit as documented for Binance spot REST (general info: "LIMITS",
# market-data endpoints); weights are per request, whatever the limit parameter.
REQUEST_WEIGHT: Mapping[str, int] = {
    HISTORICAL_TRADES_PATH: 25,
    AGG_TRADES_PATH: 4,
    EXCHANGE_INFO_PATH: 20,
    PING_PATH: 1,
}
REQUEST_WEIGHT_PER_MINUTE = 6000
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
RATE_LIMIT_STATUSES = (429, 418)  # 418: the IP is banned for a while after ignoring 429s

_VENDOR_KEYS = (
    "is_buyer_maker",
    "trade_time",
    "base_asset",
    "quote_asset",
    "is_best_match",
    "quote_quantity",
    "backfilled",
)


class RestTrade(msgspec.Struct, frozen=True):
    """One element of a ``historicalTrades`` (or ``trades``) response, Binance's field names."""

    id: int
    price: str
    qty: str
    quoteQty: str
    time: int
    isBuyerMaker: bool
    isBestMatch: bool | None = None


_page_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_trade_decoder = msgspec.json.Decoder(RestTrade)


def decode_page(payload: bytes) -> list[msgspec.Raw]:
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
    instrument: Instrument,
    validation: ValidationSettings | None = None,
) -> FetchedTrades:
    """Canonical trades (wire form) from a ``historicalTrades`` body of ``symbol``. Raises SourceError
    only when the body is not a JSON array; times are milliseconds."""
    out = ParsedBatch()
    fields = trades.TradeFields()
    quote_qty: list[str] = []
    for raw in decode_page(payload):
        frame = RawFrame(bytes(raw), received_at_us)
        try:
            r = _trade_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = RejectReason.MISSING_FIELD if "missing required field" in str(exc) else RejectReason.WRONG_TYPE
            out.rejected.append(Rejected(frame, reason, str(exc)))
            continue
        fields.add(frame, symbol, r.id, r.time, r.time, r.price, r.qty, r.isBuyerMaker, r.isBestMatch)
        quote_qty.append(r.quoteQty)
    if not len(fields):
        return FetchedTrades(None, [], out)
    _, quote_ok = exact_decimals(quote_qty)  # REST gives the notional too: exact text, or the element is rejected
    if not quote_ok.all():
        for i in np.flatnonzero(~quote_ok).tolist():
            detail = f"quoteQty {quote_qty[i][:40]!r} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(fields.frames[i], RejectReason.INVALID_NUMBER, detail))
        fields = fields.filtered(quote_ok.tolist())
        quote_qty = [q for q, ok in zip(quote_qty, quote_ok.tolist(), strict=True) if ok]
        if not len(fields):
            return FetchedTrades(None, [], out)
    _, replay = time_windows(LAUNCH_US, validation or ValidationSettings())
    checked = trades.check_trades(fields, out, window=replay, unit_us=1000)
    if not checked.keep.any():
        return FetchedTrades(None, [], out)
    rows = np.flatnonzero(checked.keep).tolist()
    checked = checked.kept()
    n = len(rows)
    maker = pa.array([fields.buyer_is_maker[i] for i in rows], pa.bool_())
    best = pa.array([fields.best_match[i] for i in rows], pa.bool_())
    instruments = {symbol: instrument}
    vendor = map_from_columns(
        _VENDOR_KEYS,
        [
            pc.if_else(maker, "true", "false"),
            pa.array(checked.trade_time).cast(pa.string()),
            pa.repeat(instrument.base, n),
            pa.repeat(instrument.quote, n),
            pc.if_else(best, "true", "false"),
            pa.array([quote_qty[i] for i in rows], pa.string()),
            pa.repeat("true", n),
        ],
        n,
    )
    batch = trades.trade_columns(
        [symbol] * n, maker, checked, instruments=instruments, unit_us=1000, vendor_data=vendor
    )
    return FetchedTrades(batch, checked.ids.tolist(), out)
