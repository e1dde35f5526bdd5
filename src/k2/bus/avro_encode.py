"""Avro binary encoding of a whole Arrow batch at once, column by column (no Python object per value).

An Avro record body is its fields' encodings one after another, and each field's encoding depends
only on its own value. So each column is turned into one or more *pieces*, binary arrays with one
element per row (a zigzag varint length, the string's bytes, a decimal's minimal two's complement,
...), built with NumPy and Arrow kernels over the whole column; Arrow's
``binary_join_element_wise`` then concatenates the pieces row by row into the bodies. Arrays and
maps are encoded the same way one level down (one element per item) and joined per row with
``binary_join``. The pieces follow the canonical record (:mod:`k2.schema.model`), field by field, so
any record K2 declares is encoded, and every body equals fastavro's ``schemaless_writer`` output for
the same row (tests/unit/bus/test_serde.py checks it byte for byte).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.model import (
    BooleanType,
    DecimalType,
    EnumType,
    Field,
    ListType,
    LogicalType,
    LongType,
    MapType,
    RecordSchema,
    StringType,
    TimestampType,
)

_EMPTY = pa.scalar(b"", pa.binary())
_NULL_BRANCH = pa.scalar(b"\x00", pa.binary())  # union branch 0: "null" (K2's optional fields are ["null", T])
_VALUE_BRANCH = pa.scalar(b"\x02", pa.binary())  # union branch 1, zigzag-encoded
_END_OF_BLOCKS = pa.scalar(b"\x00", pa.binary())  # the zero count that ends an array or a map

Piece: TypeAlias = pa.Array | pa.Scalar  # binary, one element per row (a scalar: the same bytes for every row)


def _binary(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """A binary array from int32 offsets (n + 1) and its bytes."""
    n = len(offsets) - 1
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def varints(values: np.ndarray) -> pa.Array:
    """Avro ``long``/``int`` encodings (zigzag, then base-128 varint, low groups first) of int64 values."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    zz = ((v << 1) ^ (v >> 63)).view(np.uint64)
    n = len(zz)
    sizes = np.ones(n, np.int32)
    for k in range(1, 10):
        longer = zz >= np.uint64(1 << (7 * k))
        if not longer.any():
            break
        sizes += longer
    width = int(sizes.max()) if n else 1
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    if width == 1:
        return _binary(offsets, zz.astype(np.uint8))
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((zz[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    column = np.arange(width, dtype=np.int32)
    groups |= (column < (sizes[:, None] - 1)).astype(np.uint8) << 7  # continuation bit on all but the last
    return _binary(offsets, groups[column < sizes[:, None]])


def _decimal_bytes(array: pa.Array) -> list[Piece]:
    """Length and minimal big-endian two's complement (``BigInteger.toByteArray``) of each unscaled value."""
    n = len(array)
    words = np.frombuffer(array.buffers()[1], dtype="<i8", count=2 * (array.offset + n))[2 * array.offset :]
    lo, hi = words[0::2], words[1::2]
    sign = hi >> 63  # 0 or -1: m below is the value itself, or its complement for negative values
    mlo, mhi = (lo ^ sign).view(np.uint64), (hi ^ sign).view(np.uint64)
    sizes = np.ones(n, np.int32)  # the smallest L with -2**(8L-1) <= v < 2**(8L-1), i.e. m < 2**(8L-1)
    for k in range(1, 16):
        bit = 8 * k - 1
        if bit < 64:
            sizes += (mhi > 0) | (mlo >= np.uint64(1 << bit))
        else:
            sizes += mhi >= np.uint64(1 << (bit - 64))
    big_endian = np.frombuffer(array.buffers()[1], np.uint8, 16 * n, 16 * array.offset).reshape(n, 16)[:, ::-1]
    data = big_endian[np.arange(16, dtype=np.int32) >= (16 - sizes[:, None])]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return [varints(sizes.astype(np.int64)), _binary(offsets, data)]


def _child(array: pa.Array, values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets from 0, the items they index) of a list or map array, sliced or not."""
    offsets = array.offsets.to_numpy()
    first = int(offsets[0])
    return offsets - first, values.slice(first, int(offsets[-1]) - first)


def _blocks(array: pa.Array, items: pa.Array, offsets: np.ndarray) -> list[Piece]:
    """An array or map: one block of all its items (count, items) when it has any, then the zero count."""
    counts = np.diff(offsets).astype(np.int64)
    count = pc.if_else(pa.array(counts > 0), varints(counts), _EMPTY)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), items), b"")
    return [count, joined, _END_OF_BLOCKS]


def _join(pieces: list[Piece], n: int) -> pa.Array:
    arrays = [p for p in pieces if isinstance(p, pa.Array)]
    if not arrays:  # pragma: no cover - every type has at least one per-row piece
        raise TypeError("no per-row piece")
    if len(pieces) == 1:
        return arrays[0]
    return pc.binary_join_element_wise(*pieces, b"")


def value_pieces(array: pa.Array, t: LogicalType) -> list[Piece]:
    """The pieces of a column without nulls (or whose nulls are not encoded) of logical type ``t``."""
    match t:
        case StringType():
            return [varints(pc.binary_length(array).to_numpy(zero_copy_only=False)), array.cast(pa.binary())]
        case LongType() | TimestampType():
            return [varints(array.cast(pa.int64()).fill_null(0).to_numpy())]
        case BooleanType():
            flags = array.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8)
            return [_binary(np.arange(len(array) + 1, dtype=np.int32), flags)]
        case DecimalType():
            return _decimal_bytes(array)
        case EnumType(name=name, symbols=symbols):
            index = pc.index_in(array, value_set=pa.array(symbols, pa.string()))
            if index.null_count > array.null_count:
                bad = array.filter(pc.and_(index.is_null(), array.is_valid()))[0]
                raise ValueError(f"{bad} is not a symbol of enum {name} {list(symbols)}")
            return [varints(index.fill_null(0).to_numpy().astype(np.int64))]
        case ListType(element=element):
            offsets, items = _child(array, array.values)
            return _blocks(array, _join(value_pieces(items, element), len(items)), offsets)
        case MapType(key=key, value=value):
            offsets, keys = _child(array, array.keys)
            _, values = _child(array, array.items)
            entries = _join([*value_pieces(keys, key), *value_pieces(values, value)], len(keys))
            return _blocks(array, entries, offsets)
    raise TypeError(f"no Avro encoding for {t!r}")  # pragma: no cover


def field_pieces(array: pa.Array, field: Field) -> list[Piece]:
    """The pieces of one field: optional fields are the union ``["null", T]``, a branch index first."""
    if field.required:
        if array.null_count:
            raise ValueError(f"field {field.name!r} is required but has {array.null_count} null(s)")
        return value_pieces(array, field.type)
    if array.null_count == 0:
        return [_VALUE_BRANCH, *value_pieces(array, field.type)]
    valid = array.is_valid()
    present = array.filter(valid)
    # Encode the present values only, then put them back in place with empty bytes for the nulls.
    positions = pc.subtract(pc.cumulative_sum(valid.cast(pa.int32())), 1)
    spread = pc.if_else(valid, positions, pa.scalar(None, pa.int32()))
    value = _join(value_pieces(present, field.type), len(present)).take(spread).fill_null(b"")
    return [pc.if_else(valid, _VALUE_BRANCH, _NULL_BRANCH), value]


def encode_bodies(record: RecordSchema, batch: pa.RecordBatch, prefix: bytes = b"") -> tuple[bytes, np.ndarray]:
    """Every row of ``batch`` as ``prefix`` + its Avro body for ``record``: (all bytes, row offsets).

    Row ``i`` is ``data[offsets[i]:offsets[i + 1]]``. ``batch`` must have ``record``'s columns
    (others are ignored); a value the schema cannot hold raises ValueError.
    """
    pieces: list[Piece] = [pa.scalar(prefix, pa.binary())] if prefix else []
    for field in record.fields:
        pieces.extend(field_pieces(batch.column(field.name), field))
    bodies = _join(pieces, batch.num_rows)
    offsets = np.frombuffer(bodies.buffers()[1], np.int32, batch.num_rows + 1, bodies.offset)
    data = bodies.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    return data[first:last].to_pybytes() if data is not None else b"", offsets - first
