"""Kraken v2 ``ticker`` (``event_trigger: "bbo"``) as canonical quotes (best bid/offer), columnar. Pure.

A ticker message's quotes are stored together or quarantined together (as trades, see
:mod:`k2.sources.kraken.trades`). Checks, first reason that applies: what decoding found
(``wrong_type``: a price that is no number, a timestamp that is not RFC 3339; ``unsubscribed``),
``invalid_number`` (not exact ``decimal(38, 12)``), ``out_of_range`` (a ``timestamp`` outside the
window), ``non_positive``, ``crossed_book`` (bid >= ask, also a CROSSED_QUOTE quality event).

**Ids.** Kraken's ticker carries no update id. The quotes id policy (``increasing``,
:mod:`k2.quality.quotes`) needs one that only grows per symbol, so ``source_sequence`` is the frame's
receive time in microseconds (= ``ingestion_timestamp``): K2's receive order, which the session keeps
strictly increasing per connection and across its reconnects, and which the wall clock keeps growing
across restarts. A frame received twice is two observations, stored twice; two quotes of one symbol in
one frame share the id and the second is dropped as a repeat. ``timestamp`` is the message's own
``timestamp`` when it has one (newer messages), else null.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
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
from k2.sources.kraken.trades import ASSET_CLASS, EXCHANGE
from k2.sources.kraken.wire import TICKER_VENDOR_FIELDS
from k2.sources.symbols import Instrument
from k2.sources.validation import TimeWindow, int64_column, within_window

PRICE_FIELDS = ("bid", "bid_qty", "ask", "ask_qty")


@dataclass
class QuoteFields:
    """Decoded ticker quotes of one batch (text as the wire had it), each in a group (its frame)."""

    groups: list[RawFrame] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    numbers: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in PRICE_FIELDS})
    times_us: list[int | None] = field(default_factory=list)
    history: list[bool] = field(default_factory=list)
    problems: list[tuple[RejectReason, str] | None] = field(default_factory=list)
    vendor: list[tuple[str | None, ...]] = field(default_factory=list)  # type, then TICKER_VENDOR_FIELDS

    def __len__(self) -> int:
        return len(self.symbols)

    def new_group(self, frame: RawFrame) -> int:
        self.groups.append(frame)
        return len(self.groups) - 1

    def add(
        self, group: int, symbol: str, numbers: tuple[str, str, str, str], time_us: int | None, history: bool,
        vendor: tuple[str | None, ...], problem: tuple[RejectReason, str] | None = None,
    ) -> None:  # fmt: skip
        self.group.append(group)
        self.symbols.append(symbol)
        for name, text in zip(PRICE_FIELDS, numbers, strict=True):
            self.numbers[name].append(text)
        self.times_us.append(time_us)
        self.history.append(history)
        self.problems.append(problem)
        self.vendor.append(vendor)


def quote_batch(
    fields: QuoteFields, out: ParsedBatch, *, live: TimeWindow, history: TimeWindow, instruments: dict[str, Instrument]
) -> pa.RecordBatch | None:
    """The canonical quotes (wire form) of the groups that pass every check; failing groups go to ``out``."""
    n = len(fields)
    if n == 0:
        return None
    decimals = {name: exact_decimals(texts) for name, texts in fields.numbers.items()}
    ok_number = np.ones(n, np.bool_)
    for _, ok in decimals.values():
        ok_number &= ok
    received = np.fromiter((fields.groups[g].received_at_us for g in fields.group), np.int64, n)
    has_time = np.fromiter((t is not None for t in fields.times_us), np.bool_, n)
    times, fits = int64_column([0 if t is None else t for t in fields.times_us])
    old = np.asarray(fields.history, np.bool_)
    in_window = np.where(old, within_window(times, fits, received, history), within_window(times, fits, received, live))
    ok_time = ~has_time | in_window
    bid, bid_qty = decimals["bid"][0], decimals["bid_qty"][0]
    ask, ask_qty = decimals["ask"][0], decimals["ask_qty"][0]
    positive = pc.and_(pc.and_(pc.greater(bid, ZERO), pc.greater(bid_qty, ZERO)),
                       pc.and_(pc.greater(ask, ZERO), pc.greater(ask_qty, ZERO)))  # fmt: skip
    ok_sign = to_mask(positive)
    ok_book = to_mask(pc.less(bid, ask))
    decoded = np.fromiter((p is None for p in fields.problems), np.bool_, n)
    ok = decoded & ok_number & ok_time & ok_sign & ok_book
    group = np.asarray(fields.group, np.int64)
    bad_groups = np.zeros(len(fields.groups), np.bool_)
    bad_groups[group[~ok]] = True
    keep = ~bad_groups[group]
    for g in np.flatnonzero(bad_groups).tolist():
        i = int(np.flatnonzero((group == g) & ~ok)[0])
        problem = fields.problems[i]
        text = {name: fields.numbers[name][i] for name in PRICE_FIELDS}
        if problem is not None:
            reason, detail = problem
        elif not ok_number[i]:
            name = next(k for k, (_, valid) in decimals.items() if not valid[i])
            reason = RejectReason.INVALID_NUMBER
            detail = f"{name} {brief(text[name])} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
        elif not ok_time[i]:
            reason = RejectReason.OUT_OF_RANGE
            detail = f"timestamp {brief(fields.times_us[i])} µs outside what Kraken can send"
        elif not ok_sign[i]:
            reason = RejectReason.NON_POSITIVE
            detail = (
                f"bid={brief(text['bid'])}x{brief(text['bid_qty'])} ask={brief(text['ask'])}x{brief(text['ask_qty'])}"
            )
        else:
            reason, detail = RejectReason.CROSSED_BOOK, f"bid {text['bid']} >= ask {text['ask']}"
        out.rejected.append(Rejected(fields.groups[g], reason, detail))
    if not keep.any():
        return None
    rows = np.flatnonzero(keep).tolist()
    m = len(rows)
    mask = pa.array(keep)
    symbols = [fields.symbols[i] for i in rows]
    symbol_arr = pa.array(symbols, pa.string())
    base = by_symbol(symbol_arr, {s: x.base for s, x in instruments.items()})
    quote = by_symbol(symbol_arr, {s: x.quote for s, x in instruments.items()})
    vendor_keys = ("type", *TICKER_VENDOR_FIELDS)
    vendor_cols = [pa.array([fields.vendor[i][k] for i in rows], pa.string()) for k in range(len(vendor_keys))]
    vendor = map_from_columns((*vendor_keys, "base_asset", "quote_asset"), [*vendor_cols, base, quote], m)
    recv = received[keep]
    stamped = np.where(has_time[keep], times[keep], 0)
    return canonical_quotes(  # Kraken's ticker has no update id: the receive time is the id (and the sequence)
        EXCHANGE, symbols, symbol_arr, recv, timestamp=pa.array(stamped, UTC_US, mask=~has_time[keep]),
        bid_price=bid.filter(mask), bid_size=bid_qty.filter(mask), ask_price=ask.filter(mask),
        ask_size=ask_qty.filter(mask), currency=quote, received_us=recv,
        vendor_data=vendor, asset_class=ASSET_CLASS,
    )  # fmt: skip
