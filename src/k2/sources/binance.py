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

The parser is columnar: frames are decoded with msgspec into typed structs (validation included),
fields are gathered into columns, and prices/quantities become ``decimal128`` with one Arrow cast
per batch. Per-row work is limited to decoding and the UUIDv5 message id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema import PRICE_PRECISION, PRICE_SCALE, TRADE_ARROW_SCHEMA
from k2.sources.base import DataType, ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.symbols import SymbolInfo, split_symbol_offline

VENUE = "binance"
EXCHANGE = "BINANCE"
ASSET_CLASS = "crypto"

# Binance limits (spot WebSocket streams documentation).
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_CONTROL_MESSAGES_PER_SECOND = 5
MAX_CONNECTION_AGE_S = 24 * 3600

# Namespace for deterministic message ids: uuid5(K2_NAMESPACE, "BINANCE:BTCUSDT:3735683259").
K2_NAMESPACE = uuid.UUID("6f0b5c1e-2f7a-5d2b-9a51-4b32c2f0a0e2")
_NS_BYTES = K2_NAMESPACE.bytes

_DECIMAL = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_QUANTUM = Decimal(1).scaleb(-PRICE_SCALE)
_DEC_CONTEXT = Context(prec=PRICE_PRECISION + 20)


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
    """Just enough of any frame to route it: combined-stream wrapper, raw event, or a control reply."""

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    e: str | None = None
    id: Any = None
    result: Any = None


class _Head(msgspec.Struct):
    e: str | None = None


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


def _decimal_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored exactly as decimal(38, 12), or None when it can."""
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return f"not a decimal number: {text[:40]!r}"
    if not value.is_finite():
        return f"not a finite number: {text[:40]!r}"
    if value != value.quantize(_QUANTUM, context=_DEC_CONTEXT):
        return f"more than {PRICE_SCALE} decimal places: {text[:40]!r}"
    if value.adjusted() >= PRICE_PRECISION - PRICE_SCALE:
        return f"too large for decimal({PRICE_PRECISION},{PRICE_SCALE}): {text[:40]!r}"
    return None


class BinanceAdapter:
    """Binance spot trades. Pure: give it frames and receive times, get canonical batches."""

    venue = VENUE
    exchange = EXCHANGE

    def __init__(self, symbol_info: Mapping[str, SymbolInfo] | None = None, time_unit: str = "MILLISECOND") -> None:
        self._symbols: dict[str, SymbolInfo] = dict(symbol_info or {})
        if time_unit not in ("MILLISECOND", "MICROSECOND"):
            raise ValueError(f"time_unit must be MILLISECOND or MICROSECOND, not {time_unit!r}")
        self.time_unit = time_unit
        self._to_us = 1000 if time_unit == "MILLISECOND" else 1

    # --- connection -------------------------------------------------------------------------------
    def stream_names(self, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[str]:
        suffix = {DataType.TRADES: "trade"}
        return [f"{s.lower()}@{suffix[d]}" for s in symbols for d in data_types]

    def stream_urls(self, base_url: str, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[str]:
        """Combined-stream URLs, at most 1024 streams per connection (Binance's limit)."""
        names = self.stream_names(symbols, data_types)
        query = "&timeUnit=MICROSECOND" if self.time_unit == "MICROSECOND" else ""
        base = base_url.rstrip("/")
        return [
            f"{base}/stream?streams={'/'.join(names[i : i + MAX_STREAMS_PER_CONNECTION])}{query}"
            for i in range(0, len(names), MAX_STREAMS_PER_CONNECTION)
        ]

    def subscribe_messages(self, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[str]:
        return []  # the combined-stream URL subscribes

    def symbol_info(self, symbol: str) -> SymbolInfo:
        info = self._symbols.get(symbol)
        if info is None:
            info = self._symbols[symbol] = split_symbol_offline(symbol)
        return info

    # --- parsing ----------------------------------------------------------------------------------
    def _decode(self, frame: RawFrame, out: ParsedBatch) -> BinanceTrade | None:
        try:
            env = _envelope_decoder.decode(frame.payload)
        except msgspec.ValidationError as exc:
            out.rejected.append(Rejected(frame, RejectReason.WRONG_TYPE, f"not a message object: {exc}"))
            return None
        except msgspec.DecodeError as exc:
            out.rejected.append(Rejected(frame, RejectReason.MALFORMED_JSON, str(exc)))
            return None
        if len(env.data):
            body: bytes | msgspec.Raw = env.data
        elif env.e is not None:
            body = frame.payload
        elif env.id is not None:  # reply to SUBSCRIBE / LIST_SUBSCRIPTIONS
            out.control += 1
            return None
        else:
            out.rejected.append(Rejected(frame, RejectReason.MISSING_FIELD, "no event type `e` and no `data`"))
            return None
        try:
            trade = _trade_decoder.decode(body)
        except msgspec.ValidationError as exc:
            head = _head_decoder.decode(body) if isinstance(body, msgspec.Raw) else env
            if head.e != "trade":
                out.rejected.append(Rejected(frame, RejectReason.UNKNOWN_EVENT, f"event type {head.e!r}"))
            elif "missing required field" in str(exc):
                out.rejected.append(Rejected(frame, RejectReason.MISSING_FIELD, str(exc)))
            else:
                out.rejected.append(Rejected(frame, RejectReason.WRONG_TYPE, str(exc)))
            return None
        except msgspec.DecodeError as exc:
            out.rejected.append(Rejected(frame, RejectReason.MALFORMED_JSON, str(exc)))
            return None
        if trade.e != "trade":
            out.rejected.append(Rejected(frame, RejectReason.UNKNOWN_EVENT, f"event type {trade.e!r}"))
            return None
        return trade

    def parse(self, frames: Sequence[RawFrame], *, first_platform_sequence: int, is_sample_data: bool) -> ParsedBatch:
        out = ParsedBatch()
        trades: list[BinanceTrade] = []
        kept: list[RawFrame] = []
        for frame in frames:
            trade = self._decode(frame, out)
            if trade is not None:
                trades.append(trade)
                kept.append(frame)
        if trades:
            trades, kept = self._drop_bad_numbers(trades, kept, out)
        if trades:
            out.records[DataType.TRADES] = self._to_batch(
                trades, kept, first_platform_sequence=first_platform_sequence, is_sample_data=is_sample_data
            )
        return out

    def _drop_bad_numbers(
        self, trades: list[BinanceTrade], frames: list[RawFrame], out: ParsedBatch
    ) -> tuple[list[BinanceTrade], list[RawFrame]]:
        """Reject trades whose price/quantity is not an exact positive decimal(38,12)."""
        prices = pa.array([t.p for t in trades], pa.string())
        qtys = pa.array([t.q for t in trades], pa.string())
        try:
            price_dec, qty_dec = prices.cast(_DECIMAL), qtys.cast(_DECIMAL)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            good_t, good_f = [], []
            for trade, frame in zip(trades, frames, strict=True):
                problem = _decimal_problem(trade.p) or _decimal_problem(trade.q)
                if problem:
                    out.rejected.append(Rejected(frame, RejectReason.INVALID_NUMBER, problem))
                else:
                    good_t.append(trade)
                    good_f.append(frame)
            return self._drop_bad_numbers(good_t, good_f, out) if good_t else ([], [])
        zero = pa.scalar(Decimal(0), _DECIMAL)
        bad = pc.or_(pc.less_equal(price_dec, zero), pc.less_equal(qty_dec, zero))
        if not pc.any(bad).as_py():
            return trades, frames
        mask = bad.to_pylist()
        good_t, good_f = [], []
        for trade, frame, is_bad in zip(trades, frames, mask, strict=True):
            if is_bad:
                detail = f"price={trade.p} quantity={trade.q}"
                out.rejected.append(Rejected(frame, RejectReason.NON_POSITIVE, detail))
            else:
                good_t.append(trade)
                good_f.append(frame)
        return good_t, good_f

    def _to_batch(
        self,
        trades: list[BinanceTrade],
        frames: list[RawFrame],
        *,
        first_platform_sequence: int,
        is_sample_data: bool,
    ) -> pa.RecordBatch:
        n = len(trades)
        symbols = [t.s for t in trades]
        ids = np.fromiter((t.t for t in trades), np.int64, n)
        trade_time = np.fromiter((t.T for t in trades), np.int64, n)
        event_time = np.fromiter((t.E for t in trades), np.int64, n)
        maker = pa.array([t.m for t in trades], pa.bool_())
        best = pa.array([t.M for t in trades], pa.bool_())  # null when absent: left out of the map

        symbol_arr = pa.array(symbols, pa.string())
        infos = {s: self.symbol_info(s) for s in set(symbols)}
        sym_dict = symbol_arr.dictionary_encode()
        uniq = sym_dict.dictionary.to_pylist()
        base_arr = pa.array([infos[s].base for s in uniq], pa.string()).take(sym_dict.indices)
        quote_arr = pa.array([infos[s].quote for s in uniq], pa.string()).take(sym_dict.indices)
        ids_arr = pa.array(ids)
        trade_time_str = pa.array(trade_time).cast(pa.string())

        vendor_columns: list[pa.Array] = [
            pc.if_else(maker, "true", "false"),
            pa.repeat("trade", n),
            pa.array(event_time).cast(pa.string()),
            trade_time_str,
            base_arr,
            quote_arr,
            pc.if_else(best, "true", "false"),
        ]
        if any(t.b is not None or t.a is not None for t in trades):
            vendor_columns.append(pa.array([t.b for t in trades], pa.int64()).cast(pa.string()))
            vendor_columns.append(pa.array([t.a for t in trades], pa.int64()).cast(pa.string()))
        vendor_data = _map_from_columns(_VENDOR_KEYS[: len(vendor_columns)], vendor_columns, n)

        columns: dict[str, pa.Array] = {
            "message_id": message_ids(EXCHANGE, symbols, [t.t for t in trades]),
            "trade_id": ids_arr.cast(pa.string()),
            "symbol": symbol_arr,
            "exchange": pa.repeat(EXCHANGE, n),
            "asset_class": pa.repeat(ASSET_CLASS, n),
            "timestamp": pa.array(trade_time * self._to_us, pa.timestamp("us", tz="UTC")),
            "price": pa.array([t.p for t in trades], pa.string()).cast(_DECIMAL),
            "quantity": pa.array([t.q for t in trades], pa.string()).cast(_DECIMAL),
            "currency": quote_arr,
            "side": pc.if_else(maker, "SELL", "BUY"),
            "trade_conditions": pa.ListArray.from_arrays(
                pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())
            ),
            "source_sequence": ids_arr,
            "ingestion_timestamp": pa.array(
                np.fromiter((f.received_at_us for f in frames), np.int64, n), pa.timestamp("us", tz="UTC")
            ),
            "platform_sequence": pa.array(np.arange(first_platform_sequence, first_platform_sequence + n)),
            "vendor_data": vendor_data,
            "is_sample_data": pa.repeat(is_sample_data, n),
        }
        arrays = [columns[f.name].cast(f.type) for f in TRADE_ARROW_SCHEMA]
        return pa.RecordBatch.from_arrays(arrays, schema=TRADE_ARROW_SCHEMA)


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
