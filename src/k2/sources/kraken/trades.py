"""Kraken trades as columns: checks and canonical trade columns, for the WebSocket and REST parsers. Pure.

Both parsers decode their own wire shape (a v2 ``trade`` message holding one or more trades; a REST
``Trades`` array element), gather every trade into :class:`TradeFields` under a *group*, and call
:func:`trade_batch`. A group is what is accepted or quarantined as a whole: a WebSocket message (its
trades are stored together or not at all, so a message is accounted for once, and trades lost with a
bad message are a gap that REST backfill fills), or one REST element. Checks, first reason that
applies, per trade: what decoding found (``wrong_type``, ``unsubscribed``), then ``invalid_number``
(price or quantity text that is not exact ``decimal(38, 12)``), ``out_of_range`` (trade id beyond
int64 or negative, time outside the window), ``non_positive``; a group takes the reason of its first
failing trade.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.columns import (
    UTC_US,
    ZERO,
    brief,
    by_symbol,
    canonical_trades,
    exact_decimals,
    map_from_columns,
    to_mask,
)
from k2.sources.kraken.wire import FIRST_ID
from k2.sources.symbols import Instrument
from k2.sources.validation import TimeWindow, int64_column, valid_ids, within_window

EXCHANGE = "KRAKEN"
ASSET_CLASS = "crypto"

Mask = npt.NDArray[np.bool_]


@dataclass
class TradeFields:
    """Decoded trades of one batch, field by field (text as the wire had it), each in a group."""

    vendor_keys: tuple[str, ...]  # the parser's own vendor_data keys, one value list each in ``vendor``
    groups: list[RawFrame] = field(default_factory=list)  # what a reject quarantines
    group: list[int] = field(default_factory=list)  # per trade: its group's index
    symbols: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    times_us: list[int] = field(default_factory=list)
    prices: list[str] = field(default_factory=list)
    quantities: list[str] = field(default_factory=list)
    sides: list[str] = field(default_factory=list)  # BUY / SELL (the taker's side)
    history: list[bool] = field(default_factory=list)  # old by design (snapshot, REST): no maximum age
    problems: list[tuple[RejectReason, str] | None] = field(default_factory=list)  # found while decoding
    vendor: list[list[str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vendor = [[] for _ in self.vendor_keys]

    def __len__(self) -> int:
        return len(self.ids)

    def new_group(self, frame: RawFrame) -> int:
        self.groups.append(frame)
        return len(self.groups) - 1

    def add(
        self, group: int, symbol: str, trade_id: int, time_us: int, price: str, quantity: str, side: str,
        history: bool, vendor: tuple[str | None, ...], problem: tuple[RejectReason, str] | None = None,
    ) -> None:  # fmt: skip
        """One decoded trade; ``problem`` when decoding already found it cannot be stored."""
        self.group.append(group)
        self.symbols.append(symbol)
        self.ids.append(trade_id)
        self.times_us.append(time_us)
        self.prices.append(price)
        self.quantities.append(quantity)
        self.sides.append(side)
        self.history.append(history)
        self.problems.append(problem)
        for values, value in zip(self.vendor, vendor, strict=True):
            values.append(value)


def trade_batch(
    fields: TradeFields, out: ParsedBatch, *, live: TimeWindow, history: TimeWindow, instruments: dict[str, Instrument]
) -> tuple[pa.RecordBatch | None, list[int]]:
    """The canonical trades (wire form) of the groups that pass every check, and their trade ids; each
    failing group is rejected into ``out`` once."""
    n = len(fields)
    if n == 0:
        return None, []
    price, ok_price = exact_decimals(fields.prices)
    quantity, ok_qty = exact_decimals(fields.quantities)
    ids, ids_fit = int64_column(fields.ids)
    times, times_fit = int64_column(fields.times_us)
    received = np.fromiter((fields.groups[g].received_at_us for g in fields.group), np.int64, n)
    ok_id = valid_ids(ids, ids_fit, first=FIRST_ID)
    old = np.asarray(fields.history, np.bool_)
    ok_time = np.where(old, within_window(times, times_fit, received, history),
                       within_window(times, times_fit, received, live))  # fmt: skip
    decoded = np.fromiter((p is None for p in fields.problems), np.bool_, n)
    ok_sign = to_mask(pc.and_(pc.greater(price, ZERO), pc.greater(quantity, ZERO)))
    ok = decoded & ok_price & ok_qty & ok_id & ok_time & ok_sign
    group = np.asarray(fields.group, np.int64)
    bad_groups = np.zeros(len(fields.groups), np.bool_)
    bad_groups[group[~ok]] = True
    keep = ~bad_groups[group]
    for g in np.flatnonzero(bad_groups).tolist():
        i = int(np.flatnonzero((group == g) & ~ok)[0])  # the group's first failing trade
        reason, detail = _why(fields, i, bool(ok_price[i]), bool(ok_qty[i]), bool(ok_id[i]), bool(ok_time[i]))
        out.rejected.append(Rejected(fields.groups[g], reason, detail))
    if not keep.any():
        return None, []
    return _columns(fields, keep, price, quantity, ids, times, received, instruments), ids[keep].tolist()


def _why(
    fields: TradeFields, i: int, ok_price: bool, ok_qty: bool, ok_id: bool, ok_time: bool
) -> tuple[RejectReason, str]:
    problem = fields.problems[i]
    if problem is not None:
        return problem
    if not (ok_price and ok_qty):
        name, text = ("price", fields.prices[i]) if not ok_price else ("qty", fields.quantities[i])
        return (
            RejectReason.INVALID_NUMBER,
            f"{name} {brief(text)} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal",
        )
    if not (ok_id and ok_time):
        bad = [f"trade_id={brief(fields.ids[i])}"] if not ok_id else []
        bad += [] if ok_time else [f"time={brief(fields.times_us[i])} µs"]
        return (
            RejectReason.OUT_OF_RANGE,
            f"{' '.join(bad)} outside what Kraken can send (ids >= {FIRST_ID}, int64; "
            "times from 2013-09-10 to the receive time + max_future_s, no older than max_age_s when live)",
        )
    return RejectReason.NON_POSITIVE, f"price={brief(fields.prices[i])} qty={brief(fields.quantities[i])}"


def _columns(
    fields: TradeFields, keep: Mask, price: pa.Array, quantity: pa.Array, ids: np.ndarray, times: np.ndarray,
    received: np.ndarray, instruments: dict[str, Instrument],
) -> pa.RecordBatch:  # fmt: skip
    rows = np.flatnonzero(keep).tolist()
    m = len(rows)
    mask = pa.array(keep)
    symbols = [fields.symbols[i] for i in rows]
    symbol_arr = pa.array(symbols, pa.string())
    base = by_symbol(symbol_arr, {s: x.base for s, x in instruments.items()})
    quote = by_symbol(symbol_arr, {s: x.quote for s, x in instruments.items()})
    vendor_values = [pa.array([values[i] for i in rows], pa.string()) for values in fields.vendor]
    vendor = map_from_columns((*fields.vendor_keys, "base_asset", "quote_asset"), [*vendor_values, base, quote], m)
    return canonical_trades(
        EXCHANGE, symbols, symbol_arr, ids[keep], timestamp=pa.array(times[keep], UTC_US), price=price.filter(mask),
        quantity=quantity.filter(mask), currency=quote, side=pa.array([fields.sides[i] for i in rows], pa.string()),
        received_us=received[keep],
        vendor_data=vendor, asset_class=ASSET_CLASS,
    )  # fmt: skip
