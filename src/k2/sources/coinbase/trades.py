"""Coinbase trades as columns: range checks and canonical trade columns, for the stream and REST parsers.

Both parsers decode their own wire shape (a ``match`` / ``last_match`` message; an element of a
``/products/{id}/trades`` page), gather it into :class:`TradeFields`, and call :func:`check_trades`
(every row valid or rejected once, with the first reason that applies: ``invalid_number``,
``out_of_range``, ``non_positive``) and :func:`trade_columns` (the canonical trade in wire form).

Mapping (docs/venues.md): ``trade_id`` -> ``trade_id`` and ``source_sequence`` (consecutive per
product: gaps are tracked and backfilled); ``time`` -> ``timestamp``; ``side`` is the MAKER's side,
so K2's aggressor ``side`` is its opposite (``"sell"`` -> ``BUY``); Coinbase's own ``side`` is kept
as ``vendor_data["maker_side"]``. Each parser adds its own ``vendor_data`` keys. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.coinbase.wire import FIRST_ID
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

EXCHANGE = "COINBASE"
ASSET_CLASS = "crypto"

Int64s = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass
class TradeFields:
    """Decoded trades of one batch, field by field (values as the wire had them; times parsed to µs)."""

    products: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    times_us: list[int] = field(default_factory=list)
    times: list[str] = field(default_factory=list)  # the text, for reject details and vendor data
    prices: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    maker_sides: list[str] = field(default_factory=list)
    frames: list[RawFrame] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(
        self, frame: RawFrame, product: str, trade_id: int, time_us: int, time: str, price: str, size: str,
        maker_side: str,
    ) -> None:  # fmt: skip
        self.products.append(product)
        self.ids.append(trade_id)
        self.times_us.append(time_us)
        self.times.append(time)
        self.prices.append(price)
        self.sizes.append(size)
        self.maker_sides.append(maker_side)
        self.frames.append(frame)


@dataclass(frozen=True)
class CheckedTrades:
    """:class:`TradeFields` converted and checked: ``keep`` marks the rows that passed (frame order)."""

    keep: Mask
    ids: Int64s
    times_us: Int64s
    received: Int64s
    price: pa.Array
    quantity: pa.Array

    @property
    def rows(self) -> list[int]:
        rows: list[int] = np.flatnonzero(self.keep).tolist()
        return rows


def check_trades(
    fields: TradeFields, out: ParsedBatch, *, window: TimeWindow, ids: Mapping[str, Sequence[int]] | None = None
) -> CheckedTrades:
    """Columnar range checks; each failing row is rejected into ``out`` once with the first reason that
    applies: ``invalid_number`` (decimal text), ``out_of_range`` (trade id, time, and the other
    venue counters in ``ids``, e.g. the feed ``sequence``), ``non_positive``."""
    n = len(fields)
    price, ok_price = exact_decimals(fields.prices)
    quantity, ok_qty = exact_decimals(fields.sizes)
    trade_ids, ids_fit = int64_column(fields.ids)
    times, times_fit = int64_column(fields.times_us)
    received = np.array([f.received_at_us for f in fields.frames], np.int64)
    checks: list[tuple[str, Sequence[object], Mask]] = [
        ("trade_id", fields.ids, valid_ids(trade_ids, ids_fit, first=FIRST_ID)),
        ("time", fields.times, within_window(times, times_fit, received, window)),
    ]
    for name, values in (ids or {}).items():
        checks.append((name, values, valid_ids(*int64_column(values), first=FIRST_ID)))
    ok_range = np.ones(n, np.bool_)
    for _, _, ok in checks:
        ok_range &= ok
    ok_number = ok_price & ok_qty
    ok_sign = to_mask(pc.and_(pc.greater(price, ZERO), pc.greater(quantity, ZERO)))
    keep = ok_number & ok_range & ok_sign
    for i in np.flatnonzero(~keep).tolist():
        frame = fields.frames[i]
        if not ok_number[i]:
            name, text = ("price", fields.prices[i]) if not ok_price[i] else ("size", fields.sizes[i])
            detail = f"{name} {brief(text)} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
            out.rejected.append(Rejected(frame, RejectReason.INVALID_NUMBER, detail))
        elif not ok_range[i]:
            bad = " ".join(f"{name}={brief(values[i])}" for name, values, ok in checks if not ok[i])
            out.rejected.append(Rejected(frame, RejectReason.OUT_OF_RANGE, f"{bad} outside {window_text(window)}"))
        else:
            detail = f"price={brief(fields.prices[i])} size={brief(fields.sizes[i])}"
            out.rejected.append(Rejected(frame, RejectReason.NON_POSITIVE, detail))
    return CheckedTrades(keep, trade_ids, times, received, price, quantity)


def trade_columns(
    fields: TradeFields, checked: CheckedTrades, *, instruments: dict[str, Instrument], vendor_data: pa.MapArray
) -> pa.RecordBatch:
    """The canonical trades (wire form) of the rows of ``fields`` that passed :func:`check_trades`."""
    rows = checked.rows
    keep = pa.array(checked.keep)
    products = [fields.products[i] for i in rows]
    symbol_arr = pa.array(products, pa.string())
    maker_sell = pc.equal(pa.array([fields.maker_sides[i] for i in rows], pa.string()), "sell")
    return canonical_trades(
        EXCHANGE, products, symbol_arr, checked.ids[checked.keep],
        timestamp=pa.array(checked.times_us[checked.keep], UTC_US), price=checked.price.filter(keep),
        quantity=checked.quantity.filter(keep),
        currency=by_symbol(symbol_arr, {s: i.quote for s, i in instruments.items()}),
        side=pc.if_else(maker_sell, "BUY", "SELL"),  # the taker took the other side of the maker's order
        received_us=checked.received[checked.keep],
        vendor_data=vendor_data, asset_class=ASSET_CLASS,
    )  # fmt: skip


def kept(values: Sequence[object], checked: CheckedTrades) -> list[object]:
    """``values`` (one per decoded trade) of the rows that passed."""
    return [values[i] for i in checked.rows]


def base_and_quote(products: Sequence[str], instruments: dict[str, Instrument]) -> tuple[pa.Array, pa.Array]:
    """The ``base_asset`` and ``quote_asset`` vendor columns of ``products``."""
    arr = pa.array(products, pa.string())
    return (
        by_symbol(arr, {s: i.base for s, i in instruments.items()}),
        by_symbol(arr, {s: i.quote for s, i in instruments.items()}),
    )


def window_text(window: TimeWindow) -> str:
    oldest = "" if window.max_age_us is None else f" and receive time - {window.max_age_us / 1e6:g} s"
    return (
        f"what the venue can send (ids >= {FIRST_ID}, int64; times from launch (2015-01-26){oldest} "
        f"to receive time + {window.max_future_us / 1e6:g} s)"
    )
