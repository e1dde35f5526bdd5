"""Binance trades as columns: range checks and canonical trade columns, for the stream and REST parsers.

Both parsers decode their own wire shape (a ``@trade`` message; a ``historicalTrades`` element),
gather it into :class:`TradeFields`, and call :func:`check_trades` (every row valid or rejected
once, with the first reason that applies: ``invalid_number``, ``out_of_range``, ``non_positive``)
and :func:`trade_columns` (the canonical trade in wire form, without the pipeline columns). Each
parser adds its own ``vendor_data`` keys. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.binance.wire import FIRST_ID, Trade
from k2.sources.columns import (
    UTC_US,
    ZERO,
    brief,
    by_symbol,
    canonical_trades,
    exact_decimals,
    to_mask,
)
from k2.sources.symbols import Instrument
from k2.sources.validation import TimeWindow, int64_column, valid_ids, within_window

EXCHANGE = "BINANCE"
ASSET_CLASS = "crypto"

Int64s = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass
class TradeFields:
    """Decoded trades of one batch, field by field (values as the wire had them)."""

    symbols: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    trade_times: list[int] = field(default_factory=list)
    event_times: list[int] = field(default_factory=list)  # = trade times where the wire has none (REST)
    prices: list[str] = field(default_factory=list)
    quantities: list[str] = field(default_factory=list)
    buyer_is_maker: list[bool] = field(default_factory=list)
    best_match: list[bool | None] = field(default_factory=list)
    buyer_order_ids: list[int | None] = field(default_factory=list)  # legacy payloads only
    seller_order_ids: list[int | None] = field(default_factory=list)
    frames: list[RawFrame] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, decoded: Sequence[Trade], frames: list[RawFrame]) -> TradeFields:
        """Stream trades decoded together (one per frame), field by field."""
        return cls(
            [t.s for t in decoded], [t.t for t in decoded], [t.T for t in decoded], [t.E for t in decoded],
            [t.p for t in decoded], [t.q for t in decoded], [t.m for t in decoded], [t.M for t in decoded],
            [t.b for t in decoded], [t.a for t in decoded], frames,
        )  # fmt: skip

    def add(
        self, frame: RawFrame, symbol: str, trade_id: int, trade_time: int, event_time: int, price: str, quantity: str,
        buyer_is_maker: bool, best_match: bool | None, buyer_order_id: int | None = None,
        seller_order_id: int | None = None,
    ) -> None:  # fmt: skip
        """One decoded trade, as the wire had it."""
        self.symbols.append(symbol)
        self.ids.append(trade_id)
        self.trade_times.append(trade_time)
        self.event_times.append(event_time)
        self.prices.append(price)
        self.quantities.append(quantity)
        self.buyer_is_maker.append(buyer_is_maker)
        self.best_match.append(best_match)
        self.buyer_order_ids.append(buyer_order_id)
        self.seller_order_ids.append(seller_order_id)
        self.frames.append(frame)

    def filtered(self, keep: Sequence[bool]) -> TradeFields:
        """Only the rows where ``keep`` is true."""

        def pick(values: list[Any]) -> list[Any]:
            return [v for v, k in zip(values, keep, strict=True) if k]

        return TradeFields(*(pick(getattr(self, f.name)) for f in fields(self)))


@dataclass(frozen=True)
class CheckedTrades:
    """:class:`TradeFields` converted and checked: ``keep`` marks rows that passed (in frame order)."""

    keep: Mask
    ids: Int64s
    trade_time: Int64s
    event_time: Int64s
    received: Int64s
    price: pa.Array
    quantity: pa.Array
    has_order_ids: bool

    def kept(self) -> CheckedTrades:
        """Only the rows that passed."""
        k = self.keep
        if k.all():
            return self
        mask = pa.array(k)
        return CheckedTrades(
            k[k], self.ids[k], self.trade_time[k], self.event_time[k], self.received[k],
            self.price.filter(mask), self.quantity.filter(mask), self.has_order_ids,
        )  # fmt: skip


def check_trades(fields: TradeFields, out: ParsedBatch, *, window: TimeWindow, unit_us: int) -> CheckedTrades:
    """Columnar range checks; each failing row is rejected into ``out`` once with the first reason that
    applies: ``invalid_number`` (decimal text), ``out_of_range`` (ids, times), ``non_positive``."""
    n = len(fields)
    price, ok_price = exact_decimals(fields.prices)
    quantity, ok_qty = exact_decimals(fields.quantities)
    ids, ids_fit = int64_column(fields.ids)
    trade_time, trade_fit = int64_column(fields.trade_times)
    event_time, event_fit = int64_column(fields.event_times)
    received = np.array([f.received_at_us for f in fields.frames], np.int64)
    ok_id = valid_ids(ids, ids_fit, first=FIRST_ID)
    ok_trade_time = within_window(trade_time, trade_fit, received, window, unit_us)
    ok_event_time = within_window(event_time, event_fit, received, window, unit_us)
    ok_orders = np.ones(n, np.bool_)
    has_order_ids = fields.buyer_order_ids.count(None) != n or fields.seller_order_ids.count(None) != n
    if has_order_ids:
        for values in (fields.buyer_order_ids, fields.seller_order_ids):
            ok_orders &= valid_ids(*int64_column([v or 0 for v in values]), first=FIRST_ID)
    ok_number = ok_price & ok_qty
    ok_range = ok_id & ok_trade_time & ok_event_time & ok_orders
    ok_sign = to_mask(pc.and_(pc.greater(price, ZERO), pc.greater(quantity, ZERO)))
    keep = ok_number & ok_range & ok_sign
    for i in np.flatnonzero(~keep).tolist():
        frame = fields.frames[i]
        if not ok_number[i]:
            name, text = ("price", fields.prices[i]) if not ok_price[i] else ("quantity", fields.quantities[i])
            detail = f"{name} {brief(text)} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(frame, RejectReason.INVALID_NUMBER, detail))
        elif not ok_range[i]:
            bad = [
                f"{name}={brief(value)}"
                for name, value, ok in (
                    ("id", fields.ids[i], ok_id[i]),
                    ("trade time", fields.trade_times[i], ok_trade_time[i]),
                    ("event time", fields.event_times[i], ok_event_time[i]),
                    ("order ids", (fields.buyer_order_ids[i], fields.seller_order_ids[i]), ok_orders[i]),
                )
                if not ok
            ]  # fmt: skip
            detail = f"{' '.join(bad)} outside what the venue can send ({window_text(window)})"
            out.rejected.append(Rejected(frame, RejectReason.OUT_OF_RANGE, detail))
        else:
            detail = f"price={brief(fields.prices[i])} quantity={brief(fields.quantities[i])}"
            out.rejected.append(Rejected(frame, RejectReason.NON_POSITIVE, detail))
    return CheckedTrades(keep, ids, trade_time, event_time, received, price, quantity, has_order_ids)


def trade_columns(
    symbols: Sequence[str],
    buyer_is_maker: pa.Array,
    checked: CheckedTrades,
    *,
    instruments: dict[str, Instrument],
    unit_us: int,
    vendor_data: pa.MapArray,
) -> pa.RecordBatch:
    """The canonical trades (wire form) of rows that all passed :func:`check_trades` (see ``kept()``)."""
    symbol_arr = pa.array(symbols, pa.string())
    return canonical_trades(
        EXCHANGE, symbols, symbol_arr, checked.ids, timestamp=pa.array(checked.trade_time * unit_us, UTC_US),
        price=checked.price, quantity=checked.quantity,
        currency=by_symbol(symbol_arr, {s: i.quote for s, i in instruments.items()}),
        side=pc.if_else(buyer_is_maker, "SELL", "BUY"), received_us=checked.received,
        vendor_data=vendor_data, asset_class=ASSET_CLASS,
    )  # fmt: skip


def base_and_quote(symbols: pa.Array, instruments: dict[str, Instrument]) -> tuple[pa.Array, pa.Array]:
    """The ``base_asset`` and ``quote_asset`` vendor columns of ``symbols``."""
    return (
        by_symbol(symbols, {s: i.base for s, i in instruments.items()}),
        by_symbol(symbols, {s: i.quote for s, i in instruments.items()}),
    )


def window_text(window: TimeWindow) -> str:
    oldest = "" if window.max_age_us is None else f" and receive time - {window.max_age_us / 1e6:g} s"
    return (
        f"ids >= {FIRST_ID}; times from launch (2017-07-14){oldest} to receive time + {window.max_future_us / 1e6:g} s"
    )
