"""Column builders every venue parser shares: message ids, exact decimals, maps, lists, timestamps.

Parsers gather each wire field into a column and build the canonical columns from these helpers, so
the per-row Python work stays in decoding. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from k2.schema import PRICE_PRECISION, PRICE_SCALE
from k2.schema.kinds import RecordKind, wire_schema
from k2.sources.validation import exact_decimal_mask, to_decimal

# Namespace for deterministic message ids: uuid5(K2_NAMESPACE, "BINANCE:BTCUSDT:3735683259").
K2_NAMESPACE = uuid.UUID("6f0b5c1e-2f7a-5d2b-9a51-4b32c2f0a0e2")
_NS_BYTES = K2_NAMESPACE.bytes

DECIMAL = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
UTC_US = pa.timestamp("us", tz="UTC")
ZERO = pa.scalar(0, DECIMAL)

Mask = npt.NDArray[np.bool_]
Int64s = npt.NDArray[np.int64]
QUOTE_TAG = "quote"  # quote message ids: uuid5("<EXCHANGE>:<symbol>:quote:<update id>")


def message_ids(exchange: str, symbols: Sequence[str], ids: Sequence[int], tag: str | None = None) -> pa.StringArray:
    """:func:`message_id` for a whole batch: one SHA-1 per row, the UUID bits and text built columnar."""
    n = len(ids)
    prefix = _NS_BYTES + exchange.encode() + b":"
    middle = b":" if tag is None else b":" + tag.encode() + b":"
    # Each symbol's hash state after its fixed prefix, copied per row (much cheaper than a new hash).
    heads = {s: hashlib.sha1(prefix + s.encode() + middle, usedforsecurity=False) for s in set(symbols)}
    digests = []
    for s, t in zip(symbols, ids, strict=True):
        h = heads[s].copy()
        h.update(b"%d" % t)
        digests.append(h.digest())
    raw = np.frombuffer(b"".join(digests), np.uint8).reshape(n, 20)[:, :16].copy()  # a UUID: 16 of 20 bytes
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.frombuffer(raw.tobytes().hex().encode(), np.uint8).reshape(n, 32)
    text = np.full((n, 36), ord("-"), np.uint8)  # 8-4-4-4-12 hex digits with dashes between
    for dst, src, width in ((0, 0, 8), (9, 8, 4), (14, 12, 4), (19, 16, 4), (24, 20, 12)):
        text[:, dst : dst + width] = hexed[:, src : src + width]
    offsets = np.arange(0, 36 * n + 1, 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def message_id(exchange: str, symbol: str, record_id: int | str, tag: str | None = None) -> str:
    """UUIDv5 of ``exchange:symbol:id`` (trades) or ``exchange:symbol:tag:id`` (other kinds, e.g.
    ``quote``); identical to ``uuid.uuid5``, computed faster."""
    key = f"{exchange}:{symbol}:{record_id}" if tag is None else f"{exchange}:{symbol}:{tag}:{record_id}"
    digest = bytearray(hashlib.sha1(_NS_BYTES + key.encode()).digest()[:16])  # noqa: S324 - UUIDv5 is defined on SHA-1
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def canonical_trades(
    exchange: str, symbols: Sequence[str], symbol_array: pa.Array, ids: Int64s, *, timestamp: pa.Array,
    price: pa.Array, quantity: pa.Array, currency: pa.Array, side: pa.Array, received_us: Int64s,
    vendor_data: pa.MapArray, asset_class: str,
) -> pa.RecordBatch:  # fmt: skip
    """Canonical trades (wire form) of rows that all passed a venue's checks. The venue gives what
    differs between venues; what every venue fills alike is built here: the message id (UUIDv5 of
    exchange, symbol and trade id), the trade id as text and as the source sequence, no trade
    conditions, the receive time as the ingestion timestamp."""
    n = len(symbols)
    id_array = pa.array(ids, pa.int64())
    columns: dict[str, pa.Array] = {
        "message_id": message_ids(exchange, symbols, ids.tolist()),
        "trade_id": id_array.cast(pa.string()),
        "symbol": symbol_array,
        "exchange": pa.repeat(exchange, n),
        "asset_class": pa.repeat(asset_class, n),
        "timestamp": timestamp,
        "price": price,
        "quantity": quantity,
        "currency": currency,
        "side": side,
        "trade_conditions": empty_lists(n),
        "source_sequence": id_array,
        "ingestion_timestamp": pa.array(received_us, UTC_US),
        "vendor_data": vendor_data,
    }
    return _batch(RecordKind.TRADES, columns)


def canonical_quotes(
    exchange: str, symbols: Sequence[str], symbol_array: pa.Array, ids: Int64s, *, timestamp: pa.Array,
    bid_price: pa.Array, bid_size: pa.Array, ask_price: pa.Array, ask_size: pa.Array, currency: pa.Array,
    received_us: Int64s, vendor_data: pa.MapArray, asset_class: str,
) -> pa.RecordBatch:  # fmt: skip
    """Canonical best bid/offer rows (wire form) of rows that all passed a venue's checks. ``ids`` order
    a symbol's quotes: the venue's update ids, or the receive times where it has none (Kraken); the
    message id is the UUIDv5 of exchange, symbol, ``quote`` and the id, and the ids are the source
    sequence. ``symbol_array`` is ``symbols`` as a column (the caller has built it for its own)."""
    n = len(symbols)
    columns: dict[str, pa.Array] = {
        "message_id": message_ids(exchange, symbols, ids.tolist(), QUOTE_TAG),
        "symbol": symbol_array,
        "exchange": pa.repeat(exchange, n),
        "asset_class": pa.repeat(asset_class, n),
        "timestamp": timestamp,
        "bid_price": bid_price,
        "bid_size": bid_size,
        "ask_price": ask_price,
        "ask_size": ask_size,
        "currency": currency,
        "source_sequence": pa.array(ids, pa.int64()),
        "ingestion_timestamp": pa.array(received_us, UTC_US),
        "vendor_data": vendor_data,
    }
    return _batch(RecordKind.QUOTES, columns)


def _batch(kind: RecordKind, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    schema = wire_schema(kind)
    return pa.RecordBatch.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def exact_decimals(texts: Sequence[str]) -> tuple[pa.Array, Mask]:
    """Decimal text as ``decimal(38, 12)`` and the mask of rows that convert exactly (the others are 0:
    a parser rejects them, see :func:`k2.sources.validation.exact_decimal_mask`)."""
    column = pa.array(texts, pa.string())
    ok = exact_decimal_mask(column, PRICE_PRECISION, PRICE_SCALE)
    return to_decimal(column, ok, DECIMAL), ok


def map_from_columns(keys: Sequence[str], columns: Sequence[pa.Array], n: int) -> pa.MapArray:
    """A ``map<string, string>`` column from one value column per key; null values are left out."""
    k = len(keys)
    # Row-major interleave: row i holds entries (key_0, col_0[i]), (key_1, col_1[i]), ...
    order = np.arange(n * k).reshape(k, n).T.reshape(-1)
    values = pa.concat_arrays([c.cast(pa.string()) for c in columns]).take(pa.array(order))
    key_col = pa.array(keys, pa.string()).take(pa.array(np.tile(np.arange(k, dtype=np.int32), n)))
    valid = values.is_valid()
    if valid.false_count:
        values = values.filter(valid)
        key_col = key_col.filter(valid)
        per_row = np.asarray(valid.to_numpy(zero_copy_only=False)).reshape(n, k).sum(axis=1)
        offsets = np.concatenate(([0], np.cumsum(per_row))).astype(np.int32)
    else:
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
    return pa.MapArray.from_arrays(pa.array(offsets), key_col, values)


def empty_lists(n: int) -> pa.ListArray:
    """``n`` empty ``list<string>`` values (e.g. trade conditions of a venue that has none)."""
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))


def by_symbol(symbols: pa.Array, values: dict[str, str]) -> pa.Array:
    """``values[symbol]`` for every row, computed once per distinct symbol."""
    encoded = symbols.dictionary_encode()
    return pa.array([values[s] for s in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def to_mask(array: pa.Array | pa.ChunkedArray) -> Mask:
    """A boolean Arrow column as a numpy mask (nulls are False)."""
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), np.bool_)


def brief(value: object) -> str:
    """A value for a reject detail: its repr, cut short (details are logged and stored)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
