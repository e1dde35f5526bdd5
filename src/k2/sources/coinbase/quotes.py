"""Coinbase ``ticker`` messages as canonical quotes (best bid/ask), columnar. Pure.

A ticker is sent after each match (cascades may be batched) and carries the best bid and ask at
that moment; since about 2022 also their sizes (``best_bid_size``, ``best_ask_size``: null in the
quote when absent, as in the 2021 recording). ``sequence`` is the product's feed sequence: it only
increases per product, so it is the quote's update id (``source_sequence``, id policy
``increasing``). ``time`` is the venue's event time (``timestamp``). The last trade's fields and the
24 h / 30 d statistics have no canonical column: they go to ``vendor_data`` as sent.

Checks, first reason that applies: ``invalid_number`` (a price or size that is not exact
``decimal(38, 12)`` text), ``out_of_range`` (sequence or trade id negative or beyond int64, time
outside the window), ``non_positive`` (a price or size <= 0), ``crossed_book`` (bid >= ask: a venue's
own best bid can never reach its best ask; counted as a CROSSED_QUOTE quality event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.coinbase.trades import ASSET_CLASS, EXCHANGE, Mask, window_text
from k2.sources.coinbase.wire import FIRST_ID, Ticker
from k2.sources.columns import (
    DECIMAL,
    UTC_US,
    ZERO,
    brief,
    by_symbol,
    canonical_quotes,
    map_from_columns,
    to_mask,
)
from k2.sources.symbols import Instrument
from k2.sources.validation import TimeWindow, exact_decimal_mask, int64_column, to_decimal, valid_ids, within_window

_PRICES = ("best_bid", "best_bid_size", "best_ask", "best_ask_size")
_VENDOR = (  # vendor_data key, Ticker attribute
    ("sequence", "sequence"), ("trade_id", "trade_id"), ("last_price", "price"), ("last_size", "last_size"),
    ("taker_side", "side"), ("open_24h", "open_24h"), ("volume_24h", "volume_24h"), ("low_24h", "low_24h"),
    ("high_24h", "high_24h"), ("volume_30d", "volume_30d"),
)  # fmt: skip


@dataclass
class TickerFields:
    """Decoded tickers of one batch with their frames and parsed times (None: the ticker had none)."""

    tickers: list[Ticker] = field(default_factory=list)
    times_us: list[int | None] = field(default_factory=list)
    frames: list[RawFrame] = field(default_factory=list)

    def add(self, frame: RawFrame, ticker: Ticker, time_us: int | None) -> None:
        self.tickers.append(ticker)
        self.times_us.append(time_us)
        self.frames.append(frame)


def _decimals(texts: list[str | None]) -> tuple[pa.Array, Mask]:
    """``decimal(38, 12)`` of the texts (null stays null) and the rows that are exact or null."""
    column = pa.array(texts, pa.string())
    ok = exact_decimal_mask(column, PRICE_PRECISION, PRICE_SCALE) | ~to_mask(column.is_valid())
    return to_decimal(column, ok, DECIMAL), ok


def ticker_batch(
    fields: TickerFields, out: ParsedBatch, *, window: TimeWindow, instruments: dict[str, Instrument]
) -> pa.RecordBatch | None:
    """The canonical quotes (wire form) of ``fields``; rejects go to ``out``. None when none is left."""
    tickers, frames = fields.tickers, fields.frames
    n = len(tickers)
    if n == 0:
        return None
    texts = {name: [getattr(t, name) for t in tickers] for name in _PRICES}
    decimals = {name: _decimals(values) for name, values in texts.items()}
    ok_number = np.ones(n, np.bool_)
    for _, ok in decimals.values():
        ok_number &= ok
    sequences, seq_fit = int64_column([t.sequence for t in tickers])
    ok_seq = valid_ids(sequences, seq_fit, first=FIRST_ID)
    ok_trade = valid_ids(*int64_column([t.trade_id or 0 for t in tickers]), first=FIRST_ID)
    times, times_fit = int64_column([0 if t is None else t for t in fields.times_us])
    received = np.array([f.received_at_us for f in frames], np.int64)
    has_time = np.fromiter((t is not None for t in fields.times_us), np.bool_, n)
    ok_time = ~has_time | within_window(times, times_fit, received, window)
    ok_range = ok_seq & ok_trade & ok_time
    bid, bid_size = decimals["best_bid"][0], decimals["best_bid_size"][0]
    ask, ask_size = decimals["best_ask"][0], decimals["best_ask_size"][0]
    positive = pc.and_(pc.greater(bid, ZERO), pc.greater(ask, ZERO))
    for size in (bid_size, ask_size):  # a size that was sent must be positive too
        positive = pc.and_(positive, pc.or_kleene(pc.is_null(size), pc.greater(size, ZERO)))
    ok_sign = to_mask(positive)
    ok_book = to_mask(pc.less(bid, ask))
    keep = ok_number & ok_range & ok_sign & ok_book
    for i in np.flatnonzero(~keep).tolist():
        t = tickers[i]
        if not ok_number[i]:
            name = next(k for k, (_, ok) in decimals.items() if not ok[i])
            detail = f"{name} {brief(getattr(t, name))} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(frames[i], RejectReason.INVALID_NUMBER, detail))
        elif not ok_range[i]:
            checks = (("sequence", t.sequence, ok_seq[i]), ("trade_id", t.trade_id, ok_trade[i]),
                      ("time", t.time, ok_time[i]))  # fmt: skip
            bad = " ".join(f"{k}={brief(v)}" for k, v, ok in checks if not ok)
            detail = f"{bad} outside {window_text(window)}"
            out.rejected.append(Rejected(frames[i], RejectReason.OUT_OF_RANGE, detail))
        elif not ok_sign[i]:
            detail = (
                f"bid={brief(t.best_bid)}x{brief(t.best_bid_size)} ask={brief(t.best_ask)}x{brief(t.best_ask_size)}"
            )
            out.rejected.append(Rejected(frames[i], RejectReason.NON_POSITIVE, detail))
        else:
            detail = f"bid {t.best_bid} >= ask {t.best_ask}"
            out.rejected.append(Rejected(frames[i], RejectReason.CROSSED_BOOK, detail))
    if not keep.any():
        return None
    rows = np.flatnonzero(keep).tolist()
    mask = pa.array(keep)
    kept = [tickers[i] for i in rows]
    m = len(kept)
    products = [t.product_id for t in kept]
    symbol_arr = pa.array(products, pa.string())
    update_ids = sequences[keep]
    base = by_symbol(symbol_arr, {s: i.base for s, i in instruments.items()})
    quote = by_symbol(symbol_arr, {s: i.quote for s, i in instruments.items()})
    vendor_columns = [pa.array([getattr(t, attr) for t in kept]).cast(pa.string()) for _, attr in _VENDOR]
    vendor = map_from_columns(
        [k for k, _ in _VENDOR] + ["base_asset", "quote_asset"], [*vendor_columns, base, quote], m
    )
    kept_times = [fields.times_us[i] for i in rows]
    return canonical_quotes(
        EXCHANGE, products, symbol_arr, update_ids, timestamp=pa.array(kept_times, pa.int64()).cast(UTC_US),
        bid_price=bid.filter(mask), bid_size=bid_size.filter(mask), ask_price=ask.filter(mask),
        ask_size=ask_size.filter(mask), currency=quote, received_us=received[keep],
        vendor_data=vendor, asset_class=ASSET_CLASS,
    )  # fmt: skip
