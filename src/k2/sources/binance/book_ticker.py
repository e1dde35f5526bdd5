"""Binance ``@bookTicker`` messages as canonical quotes (best bid/offer), columnar. Pure.

Checks, first reason that applies: ``invalid_number`` (a price or size that is not exact
``decimal(38, 12)`` text), ``out_of_range`` (update id ``u`` negative or beyond int64),
``non_positive`` (a price or size <= 0), ``crossed_book`` (bid >= ask: a venue's own best bid can
never reach its best ask, they would have matched; counted as a CROSSED_QUOTE quality event). The
message carries no time: ``timestamp`` is null and quotes are timed by ``ingestion_timestamp``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.binance.trades import ASSET_CLASS, EXCHANGE
from k2.sources.binance.wire import FIRST_ID, BookTicker
from k2.sources.columns import (
    UTC_US,
    ZERO,
    brief,
    by_symbol,
    canonical_quotes,
    exact_decimals,
    map_from_columns,
    to_mask,
)
from k2.sources.symbols import Instrument
from k2.sources.validation import int64_column, valid_ids

_VENDOR_KEYS = ("update_id", "base_asset", "quote_asset")


def book_ticker_batch(
    tickers: list[BookTicker], frames: list[RawFrame], out: ParsedBatch, instruments: dict[str, Instrument]
) -> pa.RecordBatch | None:
    """The canonical quotes (wire form) of ``tickers``; rejects go to ``out``. None when none is left."""
    n = len(tickers)
    if n == 0:
        return None
    texts = {name: [getattr(t, name) for t in tickers] for name in ("b", "B", "a", "A")}
    decimals = {name: exact_decimals(values) for name, values in texts.items()}
    ok_number = np.ones(n, np.bool_)
    for _, ok in decimals.values():
        ok_number &= ok
    ids, ids_fit = int64_column([t.u for t in tickers])
    ok_id = valid_ids(ids, ids_fit, first=FIRST_ID)
    bid, bid_size = decimals["b"][0], decimals["B"][0]
    ask, ask_size = decimals["a"][0], decimals["A"][0]
    positive = pc.and_(pc.and_(pc.greater(bid, ZERO), pc.greater(bid_size, ZERO)),
                       pc.and_(pc.greater(ask, ZERO), pc.greater(ask_size, ZERO)))  # fmt: skip
    ok_sign = to_mask(positive)
    ok_book = to_mask(pc.less(bid, ask))
    keep = ok_number & ok_id & ok_sign & ok_book
    for i in np.flatnonzero(~keep).tolist():
        t = tickers[i]
        if not ok_number[i]:
            name = next(k for k, (_, ok) in decimals.items() if not ok[i])
            detail = f"{name} {brief(getattr(t, name))} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(frames[i], RejectReason.INVALID_NUMBER, detail))
        elif not ok_id[i]:
            detail = f"update id u={brief(t.u)} outside what the venue can send (ids >= {FIRST_ID}, int64)"
            out.rejected.append(Rejected(frames[i], RejectReason.OUT_OF_RANGE, detail))
        elif not ok_sign[i]:
            detail = f"bid={brief(t.b)}x{brief(t.B)} ask={brief(t.a)}x{brief(t.A)}"
            out.rejected.append(Rejected(frames[i], RejectReason.NON_POSITIVE, detail))
        else:
            out.rejected.append(Rejected(frames[i], RejectReason.CROSSED_BOOK, f"bid {t.b} >= ask {t.a}"))
    if not keep.any():
        return None
    rows = np.flatnonzero(keep)
    mask = pa.array(keep)
    kept = [tickers[i] for i in rows.tolist()]
    symbols = [t.s for t in kept]
    symbol_arr = pa.array(symbols, pa.string())
    m = len(kept)
    update_ids = ids[keep]
    base = by_symbol(symbol_arr, {s: i.base for s, i in instruments.items()})
    quote = by_symbol(symbol_arr, {s: i.quote for s, i in instruments.items()})
    vendor = map_from_columns(_VENDOR_KEYS, [pa.array(update_ids).cast(pa.string()), base, quote], m)
    received = np.fromiter((frames[i].received_at_us for i in rows.tolist()), np.int64, m)
    return canonical_quotes(
        EXCHANGE, symbols, symbol_arr, update_ids, timestamp=pa.nulls(m, UTC_US), bid_price=bid.filter(mask),
        bid_size=bid_size.filter(mask), ask_price=ask.filter(mask), ask_size=ask_size.filter(mask), currency=quote,
        received_us=received,
        vendor_data=vendor, asset_class=ASSET_CLASS,
    )  # fmt: skip
