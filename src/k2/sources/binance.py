"""Binance spot: wire messages, URL building and the pure trade parser.

Wire structs mirror Binance's own field names (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):

=====  ===================================  =====  =====================================
``e``  event type ("trade")                 ``T``  trade time (ms, or µs with timeUnit)
``E``  event time                           ``m``  is the buyer the market maker?
``s``  symbol                               ``M``  ignore ("is best match", always true)
``t``  trade id (consecutive per symbol)    ``b``  buyer order id (older payloads only)
``p``  price (decimal string)               ``a``  seller order id (older payloads only)
``q``  quantity (decimal string)
=====  ===================================  =====  =====================================

``m = true`` means the buyer was the maker, so the aggressor (taker) SOLD.

The parser is columnar: frames are decoded with msgspec into typed structs (types checked there),
routed against the adapter's subscription, fields are gathered into columns, every column is
range-checked (:mod:`k2.sources.validation`: ids, times, decimal text) and prices/quantities become
``decimal128`` with one Arrow cast per batch. Per-row work is limited to decoding, routing and the
UUIDv5 message id. Every frame ends up as exactly one row, one reject (with its reason) or one
control reply; nothing in a frame can make :meth:`BinanceAdapter.parse` raise.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import ValidationSettings
from k2.errors import ConfigError
from k2.schema import PRICE_PRECISION, PRICE_SCALE, TRADE_ARROW_SCHEMA
from k2.sources.base import DataType, ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.symbols import SymbolInfo, split_symbol_offline
from k2.sources.validation import (
    TimeWindow,
    exact_decimal_mask,
    int64_column,
    to_decimal,
    valid_ids,
    within_window,
)

VENUE = "binance"
EXCHANGE = "BINANCE"
ASSET_CLASS = "crypto"

# Binance limits (spot WebSocket streams documentation).
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_CONTROL_MESSAGES_PER_SECOND = 5
MAX_CONNECTION_AGE_S = 24 * 3600
# Binance opened on 2017-07-14 UTC: no trade or event time can be older (the lower bound of every window).
LAUNCH_US = 1_499_990_400_000_000
# Binance numbers each symbol's trades (and orders) from 0: a negative id is never real.
FIRST_ID = 0

# Namespace for deterministic message ids: uuid5(K2_NAMESPACE, "BINANCE:BTCUSDT:3735683259").
K2_NAMESPACE = uuid.UUID("6f0b5c1e-2f7a-5d2b-9a51-4b32c2f0a0e2")
_NS_BYTES = K2_NAMESPACE.bytes

_DECIMAL = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_ZERO = pa.scalar(0, _DECIMAL)


class BinanceTrade(msgspec.Struct, frozen=True):
    """A ``<symbol>@trade`` message, field names as Binance sends them."""

    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool | None = None
    b: int | None = None
    a: int | None = None


class _Envelope(msgspec.Struct):
    """Just enough of any frame to route it: combined-stream wrapper, raw event, or a control reply.

    Fields are ``Any`` so that a field of the wrong type is reported by the router, by name."""

    stream: Any = None
    data: msgspec.Raw = msgspec.Raw(b"")
    e: Any = None
    id: Any = None
    result: Any = None


class _Head(msgspec.Struct):
    e: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trade_decoder = msgspec.json.Decoder(BinanceTrade)
_head_decoder = msgspec.json.Decoder(_Head)

_VENDOR_KEYS = (
    "is_buyer_maker",
    "event_type",
    "event_time",
    "trade_time",
    "base_asset",
    "quote_asset",
    "is_best_match",
    "buyer_order_id",
    "seller_order_id",
)


def message_ids(exchange: str, symbols: Sequence[str], trade_ids: Sequence[int]) -> pa.StringArray:
    """:func:`message_id` for a whole batch: one SHA-1 per row, the UUID bits and text built columnar."""
    n = len(trade_ids)
    prefix = _NS_BYTES + exchange.encode() + b":"
    pairs = zip(symbols, trade_ids, strict=True)
    digests = [hashlib.sha1(b"%s%s:%d" % (prefix, s.encode(), t), usedforsecurity=False).digest() for s, t in pairs]
    blob = b"".join(d[:16] for d in digests)
    raw = np.frombuffer(blob, np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.frombuffer(raw.tobytes().hex().encode(), np.uint8).reshape(n, 32)
    text = np.full((n, 36), ord("-"), np.uint8)  # 8-4-4-4-12 hex digits with dashes between
    for dst, src, width in ((0, 0, 8), (9, 8, 4), (14, 12, 4), (19, 16, 4), (24, 20, 12)):
        text[:, dst : dst + width] = hexed[:, src : src + width]
    offsets = np.arange(0, 36 * n + 1, 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def message_id(exchange: str, symbol: str, trade_id: int | str) -> str:
    """UUIDv5 of ``exchange:symbol:trade_id`` (identical to ``uuid.uuid5``, computed faster)."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + f"{exchange}:{symbol}:{trade_id}".encode()).digest()[:16])  # noqa: S324 - UUIDv5 is defined on SHA-1
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _ExchangeInfoSymbol(msgspec.Struct):
    symbol: str
    baseAsset: str
    quoteAsset: str


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_ExchangeInfoSymbol]


def parse_exchange_info(payload: bytes) -> dict[str, SymbolInfo]:
    """Symbols -> base/quote assets from a ``GET /api/v3/exchangeInfo`` response body."""
    info = msgspec.json.decode(payload, type=_ExchangeInfo)
    return {s.symbol: SymbolInfo(s.symbol, s.baseAsset, s.quoteAsset) for s in info.symbols}


_SUFFIX = {DataType.TRADES: "trade"}


@dataclass(frozen=True, slots=True)
class _Checked:
    """A batch's columns after validation: ``keep`` marks the rows that passed, in frame order."""

    keep: npt.NDArray[np.bool_]
    ids: npt.NDArray[np.int64]
    trade_time: npt.NDArray[np.int64]
    event_time: npt.NDArray[np.int64]
    received: npt.NDArray[np.int64]
    price: pa.Array
    quantity: pa.Array
    has_order_ids: bool  # legacy payloads carry buyer/seller order ids `b`, `a`


class BinanceAdapter:
    """Binance spot trades for one subscription. Pure: give it frames and receive times, get canonical
    batches; a frame of a stream or symbol outside ``symbols`` x ``data_types`` is quarantined."""

    venue = VENUE
    exchange = EXCHANGE

    def __init__(
        self,
        symbols: Sequence[str],
        data_types: Sequence[DataType] = (DataType.TRADES,),
        *,
        symbol_info: Mapping[str, SymbolInfo] | None = None,
        time_unit: str = "MILLISECOND",
        validation: ValidationSettings | None = None,
    ) -> None:
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(s.upper() for s in symbols))
        self.data_types: tuple[DataType, ...] = tuple(dict.fromkeys(data_types))
        if not self.symbols or not self.data_types:
            raise ConfigError("an adapter needs at least one symbol and one data type")
        if time_unit not in ("MILLISECOND", "MICROSECOND"):
            raise ConfigError(f"time_unit must be MILLISECOND or MICROSECOND, not {time_unit!r}")
        self._symbols: dict[str, SymbolInfo] = dict(symbol_info or {})
        self.time_unit = time_unit
        self._to_us = 1000 if time_unit == "MILLISECOND" else 1
        # Combined-stream name -> the symbol its frames must carry; raw events are matched by symbol.
        self._streams = {f"{s.lower()}@{_SUFFIX[d]}": s for s in self.symbols for d in self.data_types}
        self._trade_symbols = frozenset(self.symbols) if DataType.TRADES in self.data_types else frozenset()
        v = validation or ValidationSettings()
        future_us = int(v.max_future_s * 1e6)
        self.replay_window = TimeWindow(LAUNCH_US, future_us)
        """Times accepted in replayed recordings and REST backfill pages: old by design."""
        self.live_window = TimeWindow(LAUNCH_US, future_us, None if v.max_age_s is None else int(v.max_age_s * 1e6))
        """Times accepted in live frames."""

    # --- connection -------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        """The subscription as Binance stream names (``btcusdt@trade``)."""
        return list(self._streams)

    def stream_urls(self, base_url: str) -> list[str]:
        """Combined-stream URLs, at most 1024 streams per connection (Binance's limit)."""
        names = self.stream_names()
        query = "&timeUnit=MICROSECOND" if self.time_unit == "MICROSECOND" else ""
        base = base_url.rstrip("/")
        return [
            f"{base}/stream?streams={'/'.join(names[i : i + MAX_STREAMS_PER_CONNECTION])}{query}"
            for i in range(0, len(names), MAX_STREAMS_PER_CONNECTION)
        ]

    def subscribe_messages(self) -> list[str]:
        return []  # the combined-stream URL subscribes

    def symbol_info(self, symbol: str) -> SymbolInfo:
        info = self._symbols.get(symbol)
        if info is None:
            info = self._symbols[symbol] = split_symbol_offline(symbol)
        return info

    # --- parsing ----------------------------------------------------------------------------------
    def parse(self, frames: Sequence[RawFrame], *, first_platform_sequence: int, is_sample_data: bool) -> ParsedBatch:
        out = ParsedBatch()
        trades: list[BinanceTrade] = []
        kept: list[RawFrame] = []
        for frame in frames:
            trade = self._route(frame, out)
            if trade is not None:
                trades.append(trade)
                kept.append(frame)
        window = self.replay_window if is_sample_data else self.live_window
        batch, _ = self.trade_batch(
            trades, kept, out, window=window, first_platform_sequence=first_platform_sequence,
            is_sample_data=is_sample_data,
        )  # fmt: skip
        if batch is not None:
            out.records[DataType.TRADES] = batch
        return out

    def _route(self, frame: RawFrame, out: ParsedBatch) -> BinanceTrade | None:
        """Decode one frame and check it belongs to the subscription; None when it was rejected or
        was a control reply (``out`` says which). The hot path (a subscribed combined-stream trade)
        is two decodes and two dict lookups."""
        try:
            env = _envelope_decoder.decode(frame.payload)
        except msgspec.ValidationError as exc:
            return _reject(out, frame, RejectReason.WRONG_TYPE, f"not a JSON object: {exc}")
        except (msgspec.DecodeError, RecursionError) as exc:  # msgspec's depth limit is a RecursionError
            return _reject(out, frame, RejectReason.MALFORMED_JSON, str(exc))
        stream, data = env.stream, env.data
        symbol: str | None = None  # the symbol a combined stream's frames must carry
        if stream is not None or len(data):  # a combined-stream envelope
            if not isinstance(stream, str):
                reason = RejectReason.MISSING_FIELD if stream is None else RejectReason.WRONG_TYPE
                return _reject(out, frame, reason, f"`data` needs a string `stream`, got {_brief(stream)}")
            if not len(data):
                return _reject(out, frame, RejectReason.MISSING_FIELD, f"stream {_brief(stream)} without `data`")
            symbol = self._streams.get(stream)
            if symbol is None:
                return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"stream {_brief(stream)} is not subscribed")
            body: bytes | msgspec.Raw = data
        elif env.e is not None:  # a raw event, as /ws/<stream> sends it
            body = frame.payload
        elif env.id is not None:  # reply to SUBSCRIBE / LIST_SUBSCRIPTIONS
            out.control += 1
            return None
        else:
            return _reject(out, frame, RejectReason.MISSING_FIELD, "no event type `e` and no `data`")
        try:
            trade = _trade_decoder.decode(body)
        except msgspec.ValidationError as exc:
            return _reject(out, frame, *_why_not_a_trade(body, exc))
        except (msgspec.DecodeError, RecursionError) as exc:
            return _reject(out, frame, RejectReason.MALFORMED_JSON, str(exc))
        if trade.e != "trade":
            return _reject(out, frame, RejectReason.UNKNOWN_EVENT, f"event type {_brief(trade.e)}")
        if symbol is None:
            if trade.s not in self._trade_symbols:
                return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"symbol {_brief(trade.s)} is not subscribed")
        elif trade.s != symbol:
            return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"symbol {_brief(trade.s)} on stream {stream!r}")
        return trade

    def trade_batch(
        self,
        trades: list[BinanceTrade],
        frames: list[RawFrame],
        out: ParsedBatch,
        *,
        window: TimeWindow,
        first_platform_sequence: int,
        is_sample_data: bool,
    ) -> tuple[pa.RecordBatch | None, npt.NDArray[np.bool_]]:
        """Range-check decoded trades (rejects go to ``out``) and build the canonical batch of the
        rest (None when none is left); also returns which trades were kept. Shared by the stream and
        the REST parser."""
        if not trades:
            return None, np.ones(0, np.bool_)
        checked = self._check(trades, frames, out, window)
        keep = checked.keep
        if not keep.all():
            if not keep.any():
                return None, keep
            mask = pa.array(keep)
            trades = [t for t, k in zip(trades, keep, strict=True) if k]
            checked = _Checked(
                keep[keep], checked.ids[keep], checked.trade_time[keep], checked.event_time[keep],
                checked.received[keep], checked.price.filter(mask), checked.quantity.filter(mask),
                checked.has_order_ids,
            )  # fmt: skip
        batch = self._to_batch(
            trades, checked, first_platform_sequence=first_platform_sequence, is_sample_data=is_sample_data
        )
        return batch, keep

    def _check(
        self, trades: list[BinanceTrade], frames: list[RawFrame], out: ParsedBatch, window: TimeWindow
    ) -> _Checked:
        """Columnar range checks; each failing row is rejected once, with the first reason that applies:
        ``invalid_number`` (decimal text), ``out_of_range`` (ids, times), ``non_positive``."""
        n = len(trades)
        price_text = pa.array([t.p for t in trades], pa.string())
        qty_text = pa.array([t.q for t in trades], pa.string())
        ok_price = exact_decimal_mask(price_text, PRICE_PRECISION, PRICE_SCALE)
        ok_qty = exact_decimal_mask(qty_text, PRICE_PRECISION, PRICE_SCALE)
        price, quantity = to_decimal(price_text, ok_price, _DECIMAL), to_decimal(qty_text, ok_qty, _DECIMAL)
        ids, ids_fit = int64_column([t.t for t in trades])
        trade_time, trade_fit = int64_column([t.T for t in trades])
        event_time, event_fit = int64_column([t.E for t in trades])
        received = np.fromiter((f.received_at_us for f in frames), np.int64, n)
        ok_id = valid_ids(ids, ids_fit, first=FIRST_ID)
        ok_trade_time = within_window(trade_time, trade_fit, received, window, self._to_us)
        ok_event_time = within_window(event_time, event_fit, received, window, self._to_us)
        ok_orders = np.ones(n, np.bool_)
        has_order_ids = any(t.b is not None or t.a is not None for t in trades)
        if has_order_ids:
            for values in ([t.b or 0 for t in trades], [t.a or 0 for t in trades]):
                ok_orders &= valid_ids(*int64_column(values), first=FIRST_ID)
        ok_number = ok_price & ok_qty
        ok_range = ok_id & ok_trade_time & ok_event_time & ok_orders
        ok_sign = _to_numpy(pc.and_(pc.greater(price, _ZERO), pc.greater(quantity, _ZERO)))
        keep = ok_number & ok_range & ok_sign
        for i in np.flatnonzero(~keep).tolist():
            t = trades[i]
            if not ok_number[i]:
                text = t.p if not ok_price[i] else t.q
                name = "price" if not ok_price[i] else "quantity"
                detail = f"{name} {_brief(text)} is not a decimal({PRICE_PRECISION},{PRICE_SCALE}) literal"
                out.rejected.append(Rejected(frames[i], RejectReason.INVALID_NUMBER, detail))
            elif not ok_range[i]:
                bad = [
                    f"{name}={_brief(value)}"
                    for name, value, ok in (
                        ("t", t.t, ok_id[i]),
                        ("T", t.T, ok_trade_time[i]),
                        ("E", t.E, ok_event_time[i]),
                        ("b/a", (t.b, t.a), ok_orders[i]),
                    )
                    if not ok
                ]
                detail = f"{' '.join(bad)} outside what the venue can send ({_window_text(window)})"
                out.rejected.append(Rejected(frames[i], RejectReason.OUT_OF_RANGE, detail))
            else:
                detail = f"price={_brief(t.p)} quantity={_brief(t.q)}"
                out.rejected.append(Rejected(frames[i], RejectReason.NON_POSITIVE, detail))
        return _Checked(keep, ids, trade_time, event_time, received, price, quantity, has_order_ids)

    def _to_batch(
        self, trades: list[BinanceTrade], checked: _Checked, *, first_platform_sequence: int, is_sample_data: bool
    ) -> pa.RecordBatch:
        n = len(trades)
        symbols = [t.s for t in trades]
        maker = pa.array([t.m for t in trades], pa.bool_())
        best = pa.array([t.M for t in trades], pa.bool_())  # null when absent: left out of the map

        symbol_arr = pa.array(symbols, pa.string())
        infos = {s: self.symbol_info(s) for s in set(symbols)}
        sym_dict = symbol_arr.dictionary_encode()
        uniq = sym_dict.dictionary.to_pylist()
        base_arr = pa.array([infos[s].base for s in uniq], pa.string()).take(sym_dict.indices)
        quote_arr = pa.array([infos[s].quote for s in uniq], pa.string()).take(sym_dict.indices)
        ids_arr = pa.array(checked.ids)

        vendor_columns: list[pa.Array] = [
            pc.if_else(maker, "true", "false"),
            pa.repeat("trade", n),
            pa.array(checked.event_time).cast(pa.string()),
            pa.array(checked.trade_time).cast(pa.string()),
            base_arr,
            quote_arr,
            pc.if_else(best, "true", "false"),
        ]
        if checked.has_order_ids:
            vendor_columns.append(pa.array([t.b for t in trades], pa.int64()).cast(pa.string()))
            vendor_columns.append(pa.array([t.a for t in trades], pa.int64()).cast(pa.string()))
        vendor_data = _map_from_columns(_VENDOR_KEYS[: len(vendor_columns)], vendor_columns, n)

        columns: dict[str, pa.Array] = {
            "message_id": message_ids(EXCHANGE, symbols, checked.ids.tolist()),
            "trade_id": ids_arr.cast(pa.string()),
            "symbol": symbol_arr,
            "exchange": pa.repeat(EXCHANGE, n),
            "asset_class": pa.repeat(ASSET_CLASS, n),
            "timestamp": pa.array(checked.trade_time * self._to_us, pa.timestamp("us", tz="UTC")),
            "price": checked.price,
            "quantity": checked.quantity,
            "currency": quote_arr,
            "side": pc.if_else(maker, "SELL", "BUY"),
            "trade_conditions": pa.ListArray.from_arrays(
                pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())
            ),
            "source_sequence": ids_arr,
            "ingestion_timestamp": pa.array(checked.received, pa.timestamp("us", tz="UTC")),
            "platform_sequence": pa.array(np.arange(first_platform_sequence, first_platform_sequence + n)),
            "vendor_data": vendor_data,
            "is_sample_data": pa.repeat(is_sample_data, n),
        }
        arrays = [columns[f.name].cast(f.type) for f in TRADE_ARROW_SCHEMA]
        return pa.RecordBatch.from_arrays(arrays, schema=TRADE_ARROW_SCHEMA)


def _reject(out: ParsedBatch, frame: RawFrame, reason: RejectReason, detail: str) -> BinanceTrade | None:
    """Record a reject; returns None, so that ``return _reject(...)`` ends a router branch."""
    out.rejected.append(Rejected(frame, reason, detail))
    return None


def _why_not_a_trade(body: bytes | msgspec.Raw, error: msgspec.ValidationError) -> tuple[RejectReason, str]:
    """The reason a body that is JSON failed to decode as a trade: not an object, no or another event
    type (which says nothing about its other fields), or a missing/mistyped trade field."""
    try:
        head = _head_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        return RejectReason.WRONG_TYPE, f"`data` is not an object: {exc}"
    if head.e is None:
        return RejectReason.MISSING_FIELD, "no event type `e`"
    if not isinstance(head.e, str):
        return RejectReason.WRONG_TYPE, f"event type `e` is not a string: {_brief(head.e)}"
    if head.e != "trade":
        return RejectReason.UNKNOWN_EVENT, f"event type {_brief(head.e)}"
    if "missing required field" in str(error):
        return RejectReason.MISSING_FIELD, str(error)
    return RejectReason.WRONG_TYPE, str(error)


def _brief(value: object) -> str:
    """A value for a reject detail: its repr, cut short (details are logged and stored)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _window_text(window: TimeWindow) -> str:
    oldest = "" if window.max_age_us is None else f" and receive time - {window.max_age_us / 1e6:g} s"
    return (
        f"ids >= {FIRST_ID}; times from launch (2017-07-14){oldest} to receive time + {window.max_future_us / 1e6:g} s"
    )


def _to_numpy(mask: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), np.bool_)


def _map_from_columns(keys: Sequence[str], columns: Sequence[pa.Array], n: int) -> pa.MapArray:
    """Build a map<string,string> column from one value column per key; null values are left out."""
    k = len(keys)
    # Row-major interleave: row i holds entries (key_0, col_0[i]), (key_1, col_1[i]), ...
    order = np.arange(n * k).reshape(k, n).T.reshape(-1)
    values = pa.concat_arrays([c.cast(pa.string()) for c in columns]).take(pa.array(order))
    key_col = pa.array(np.tile(np.array(keys, dtype=object), n), pa.string())
    valid = values.is_valid()
    if valid.false_count:
        values = values.filter(valid)
        key_col = key_col.filter(valid)
        per_row = np.asarray(valid.to_numpy(zero_copy_only=False)).reshape(n, k).sum(axis=1)
        offsets = np.concatenate(([0], np.cumsum(per_row))).astype(np.int32)
    else:
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
    return pa.MapArray.from_arrays(pa.array(offsets), key_col, values)
