"""Avro binary decoding of many bodies at once, column by column (no Python object per value).

Avro bodies carry no field offsets: where a field starts depends on the lengths before it. But every
body of one writer schema has the same *sequence* of fields, so the decoder walks them for all
bodies together: one NumPy array of read positions, one element per body, advanced field by field
(a varint read is a few vectorised operations over all bodies; an array or map is read item by
item, the k-th item of every body at once). Strings are located, not copied, and gathered at the
end by one Arrow ``take`` over the whole buffer; decimals become ``decimal128`` words directly.

:func:`compile_plan` derives the reading plan from the *writer* schema (Avro JSON, as the registry
holds it) and the projection onto the *reader's* canonical record (:mod:`k2.schema.model`): fields
matched by name, writer fields the reader lacks read and dropped, reader fields the writer lacks
filled with their null default, enum symbols mapped by name. Anything outside what the plan handles
(type promotions, nested arrays, multi-block arrays, ...) gets no plan, and the caller decodes those
messages with fastavro one by one. Per body, anything unexpected (a read past the end, trailing
bytes, a varint of 10 bytes, an enum index or union branch out of range, a decimal beyond the
reader's precision, invalid UTF-8) marks that body *suspect*: the caller decodes it with fastavro,
which gives the exact value or the exact error. So this module never decides that a message is bad,
it only decides which messages it is sure it decoded exactly as fastavro would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.arrow import to_arrow
from k2.schema.model import (
    BooleanType,
    DecimalType,
    EnumType,
    ListType,
    LogicalType,
    LongType,
    MapType,
    RecordSchema,
    StringType,
    TimestampType,
)

Chunk = dict[str, np.ndarray]  # what a reader read: arrays with one element per slot
PADDING = 16  # zero bytes after the last body: a varint read near the end stays in the buffer
_MAX_VARINT = 9  # bytes; a 10-byte varint (|value| >= 2**62) is left to fastavro


class _Suspect(Exception):
    """Rows whose values cannot be built (invalid UTF-8): decoded one by one instead."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__(f"{len(rows)} suspect rows")
        self.rows = rows


@dataclass
class _Bodies:
    """The bodies being read: one buffer, where each ends, and which are suspect so far."""

    buf: np.ndarray  # uint8, the bodies one after another, then PADDING zero bytes
    end: np.ndarray  # int64 per row
    suspect: np.ndarray  # bool per row
    data: pa.Buffer = field(init=False)

    def __post_init__(self) -> None:
        self.data = pa.py_buffer(self.buf)

    def flag(self, where: np.ndarray) -> None:
        """Mark the rows where ``where`` holds as suspect (every read array has one element per row)."""
        self.suspect |= where

    def varint(self, pos: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Read one zigzag varint at ``pos`` for the active slots (others: 0, not advanced)."""
        buf = self.buf
        byte = buf[pos]
        value = (byte & 0x7F).astype(np.uint64)
        size = active.astype(np.int64)
        more = np.nonzero(active & (byte >= 0x80))[0]
        k = 1
        while len(more):
            if k == _MAX_VARINT:
                self.suspect[more] = True
                break
            byte = buf[pos[more] + k]
            value[more] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
            size[more] += 1
            more = more[byte >= 0x80]
            k += 1
        pos += size
        self.clamp(pos)
        signed = (value >> np.uint64(1)).view(np.int64) ^ -(value & np.uint64(1)).view(np.int64)
        return np.where(active, signed, 0)

    def clamp(self, pos: np.ndarray) -> None:
        """Rows read past their end are suspect; their position stays at the end."""
        over = pos > self.end
        if over.any():
            self.suspect |= over
            np.minimum(pos, self.end, out=pos)


class _Reader:
    """Reads one Avro type for every active slot; builds the Arrow array of some of the slots."""

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        raise NotImplementedError

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        """The array of the slots ``sel`` (in order; ``rows``: the row of each) as type ``t``."""
        raise NotImplementedError


class _Long(_Reader):
    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        return {"v": bodies.varint(pos, active)}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        return pa.Array.from_buffers(t, len(sel), [None, pa.py_buffer(np.ascontiguousarray(chunk["v"][sel]))])


class _Boolean(_Reader):
    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        byte = np.where(active, bodies.buf[pos], 0)
        bodies.flag(byte > 1)
        pos += active
        bodies.clamp(pos)
        return {"v": byte}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        return pa.array(chunk["v"][sel].astype(bool), pa.bool_())


class _Bytes(_Reader):
    """``string`` or ``bytes``: a length, then the bytes (located here, gathered in :meth:`build`)."""

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        length = bodies.varint(pos, active)
        bad = (length < 0) | (length > bodies.end - pos)
        if bad.any():
            bodies.flag(bad)
            length[bad] = 0
        start = pos.copy()
        pos += length
        return {"s": start, "e": pos.copy()}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        n = len(sel)
        # One binary array over the whole buffer alternating gap, value, gap, value...: take the values.
        bounds = np.zeros(2 * n + 1, np.int64)
        bounds[1::2] = chunk["s"][sel]
        bounds[2::2] = chunk["e"][sel]
        if bounds[-1] >= 2**31:  # pragma: no cover - batches are far smaller
            raise OverflowError("a decode batch must stay below 2 GiB")
        spans = pa.Array.from_buffers(pa.binary(), 2 * n, [None, pa.py_buffer(bounds.astype(np.int32)), bodies.data])
        values = spans.take(pa.array(np.arange(1, 2 * n, 2, dtype=np.int32)))
        if t == pa.binary():
            return values
        try:
            return values.cast(t)
        except pa.ArrowInvalid:  # invalid UTF-8: find the rows, fastavro reports them exactly
            bad = [i for i, v in enumerate(values.to_pylist()) if not _is_utf8(v)]
            raise _Suspect(np.unique(rows[bad])) from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Decimal(_Bytes):
    """Avro ``bytes`` holding a decimal's unscaled big-endian two's complement, to decimal128 words."""

    def __init__(self, precision: int) -> None:
        self._limit = 10**precision

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        span = super().read(bodies, pos, active)
        start, size = span["s"], span["e"] - span["s"]
        bodies.flag(size > 16)
        size = np.minimum(size, 16)
        column = np.arange(16, dtype=np.int64)
        first = 16 - size[:, None]  # big-endian: the value's bytes are the last ``size`` of 16
        inside = column >= first
        big = np.where(inside, bodies.buf[np.where(inside, start[:, None] + column - first, 0)], 0)
        negative = (size > 0) & (bodies.buf[start] >= 0x80)
        big[negative[:, None] & ~inside] = 0xFF  # sign extension
        words = np.ascontiguousarray(big[:, ::-1]).view("<i8")  # little-endian: lo, hi
        lo, hi = words[:, 0].copy(), words[:, 1].copy()
        sign = hi >> 63
        mlo, mhi = (lo ^ sign).view(np.uint64), (hi ^ sign).view(np.uint64)  # |v| (v >= 0) or |v| - 1
        lhi, llo = np.uint64(self._limit >> 64), np.uint64(self._limit & (2**64 - 1))
        nlimit = self._limit - 1  # v > -limit  <=>  |v| - 1 < limit - 1
        nhi, nlo = np.uint64(nlimit >> 64), np.uint64(nlimit & (2**64 - 1))
        fits_pos = (mhi < lhi) | ((mhi == lhi) & (mlo < llo))
        fits_neg = (mhi < nhi) | ((mhi == nhi) & (mlo < nlo))
        bodies.flag(active & ~np.where(sign < 0, fits_neg, fits_pos))
        return {"lo": lo, "hi": hi}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        words = np.empty(2 * len(sel), np.int64)
        words[0::2] = chunk["lo"][sel]
        words[1::2] = chunk["hi"][sel]
        return pa.Array.from_buffers(t, len(sel), [None, pa.py_buffer(words)])


class _Enum(_Reader):
    def __init__(self, symbols: list[str], allowed: list[bool]) -> None:
        self._symbols = pa.array(symbols, pa.string())
        self._allowed = np.array(allowed, bool)

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        index = bodies.varint(pos, active)
        ok = (index >= 0) & (index < len(self._allowed))
        ok[ok] = self._allowed[index[ok]]  # a symbol the reader lacks: fastavro raises the error
        bodies.flag(active & ~ok)
        return {"v": np.where(ok, index, 0)}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        return self._symbols.take(pa.array(chunk["v"][sel])).cast(t)


class _Optional(_Reader):
    """The union ``["null", T]`` (either order): a branch index, then T when it is not null."""

    def __init__(self, inner: _Reader, null_branch: int) -> None:
        self._inner = inner
        self._null = null_branch

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        branch = bodies.varint(pos, active)
        bodies.flag(active & (branch != 0) & (branch != 1))
        present = active & (branch == 1 - self._null)
        return {**self._inner.read(bodies, pos, present), "valid": present}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        values = self._inner.build(bodies, chunk, sel, rows, t)
        valid = chunk["valid"][sel]
        if valid.all():
            return values
        return pc.if_else(pa.array(valid), values, pa.scalar(None, t))


def _sub(chunk: Chunk, prefix: str) -> Chunk:
    return {n[len(prefix) :]: a for n, a in chunk.items() if n.startswith(prefix)}


class _Blocks(_Reader):
    """An array (``items``) or a map (a string key, then ``items``): one block of items, then a zero
    count, as every Avro writer K2 knows writes them. Other block layouts are suspect."""

    def __init__(self, items: _Reader, keyed: bool) -> None:
        self._items = items
        self._keys = _Bytes() if keyed else None

    def read(self, bodies: _Bodies, pos: np.ndarray, active: np.ndarray) -> Chunk:
        count = bodies.varint(pos, active)
        bad = (count < 0) | (count > bodies.end - pos)  # a negative count (a sized block) is left to fastavro
        if bad.any():
            bodies.flag(bad)
            count[bad] = 0
        parts: list[Chunk] = []
        for k in range(int(count.max()) if len(count) else 0):
            live = active & (count > k)  # the k-th item of every row that has one
            part = {"key." + n: a for n, a in self._keys.read(bodies, pos, live).items()} if self._keys else {}
            part.update({"item." + n: a for n, a in self._items.read(bodies, pos, live).items()})
            parts.append(part)
        if parts:
            bodies.flag(bodies.varint(pos, active & (count > 0)) != 0)  # a second block: left to fastavro
        return {"count": count, **{n: np.concatenate([p[n] for p in parts]) for n in (parts[0] if parts else ())}}

    def build(self, bodies: _Bodies, chunk: Chunk, sel: np.ndarray, rows: np.ndarray, t: pa.DataType) -> pa.Array:
        counts = chunk["count"][sel]
        offsets = np.zeros(len(sel) + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        # Item k of slot s was read into slot k * slots + s: take them slot by slot, item by item.
        owner = np.repeat(np.arange(len(sel)), counts)
        k = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], counts)
        item_sel = k * len(chunk["count"]) + sel[owner]
        item_rows = rows[owner]
        if not len(item_sel):  # no row has an item (nothing was read)
            return _empty_lists(offsets, t)
        if self._keys is None:
            assert isinstance(t, pa.ListType)
            values = self._items.build(bodies, _sub(chunk, "item."), item_sel, item_rows, t.value_type)
            return pa.ListArray.from_arrays(pa.array(offsets), values, type=t)
        assert isinstance(t, pa.MapType)
        keys = self._keys.build(bodies, _sub(chunk, "key."), item_sel, item_rows, t.key_type)
        _check_unique_keys(keys, owner, offsets, item_rows)
        items = self._items.build(bodies, _sub(chunk, "item."), item_sel, item_rows, t.item_type)
        return pa.MapArray.from_arrays(pa.array(offsets), keys, items, type=t)


def _check_unique_keys(keys: pa.Array, owner: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
    """Rows whose map repeats a key are suspect: fastavro keeps the last value of a key (a dict)."""
    encoded = keys.dictionary_encode()
    index = encoded.indices.to_numpy().astype(np.int64)
    distinct = len(encoded.dictionary)
    if distinct < 63:  # one bit per key: a repeat makes the sum of a row's bits differ from their or
        bits = np.left_shift(1, index)
        starts = offsets[:-1][np.diff(offsets) > 0]
        twice = np.add.reduceat(bits, starts) != np.bitwise_or.reduceat(bits, starts)
        repeated = starts[twice]
    else:
        codes = np.sort(owner * distinct + index)  # (map, key) pairs: a repeat sorts next to its twin
        repeated = offsets[:-1][np.unique(codes[1:][codes[1:] == codes[:-1]] // distinct)]
    if len(repeated):
        raise _Suspect(np.unique(rows[repeated]))


def _empty_lists(offsets: np.ndarray, t: pa.DataType) -> pa.Array:
    if isinstance(t, pa.MapType):
        return pa.MapArray.from_arrays(pa.array(offsets), pa.array([], t.key_type), pa.array([], t.item_type), type=t)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array([], t.value_type), type=t)


@dataclass(frozen=True)
class Plan:
    """How to read the bodies of one writer schema into batches of the reader's record."""

    readers: list[_Reader]  # one per writer field, in the writer's order
    sources: list[int | None]  # per reader field: its writer field, or None (the null default)
    schema: pa.Schema  # the reader's canonical Arrow schema

    def decode(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray]:
        """The batch of the bodies ``buf[starts[i]:ends[i]]`` that are not suspect, and the suspect mask.

        ``buf`` must end with :data:`PADDING` zero bytes.
        """
        bodies = _Bodies(buf, ends.astype(np.int64), np.zeros(len(starts), bool))
        pos = starts.astype(np.int64)
        everyone = np.ones(len(starts), bool)
        chunks = [reader.read(bodies, pos, everyone) for reader in self.readers]
        bodies.suspect |= pos != bodies.end  # trailing bytes
        while True:
            rows = np.nonzero(~bodies.suspect)[0]
            try:
                return self._build(bodies, chunks, rows), bodies.suspect
            except _Suspect as exc:
                bodies.suspect[exc.rows] = True

    def _build(self, bodies: _Bodies, chunks: list[Chunk], rows: np.ndarray) -> pa.RecordBatch:
        arrays = []
        for f, source in zip(self.schema, self.sources, strict=True):
            if source is None:
                arrays.append(pa.nulls(len(rows), f.type))
                continue
            chunk = chunks[source]
            if not f.nullable and "valid" in chunk:  # optional in the writer, required here: nulls are errors
                nulls = ~chunk["valid"][rows]
                if nulls.any():
                    raise _Suspect(rows[nulls])
            arrays.append(self.readers[source].build(bodies, chunk, rows, rows, f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _fullname(schema: dict[str, Any], namespace: str | None) -> str:
    name = str(schema.get("name"))
    space = schema.get("namespace", namespace)
    return name if "." in name or not space else f"{space}.{name}"


def compile_plan(writer: Any, record: RecordSchema) -> Plan | None:
    """The plan to read bodies written with ``writer`` (Avro JSON) as ``record``, or None when this
    module does not handle the pair (fastavro then decodes, resolves or rejects each message)."""
    if not isinstance(writer, dict) or writer.get("type") != "record" or not isinstance(writer.get("fields"), list):
        return None
    if _fullname(writer, None) != f"{record.namespace}.{record.name}":
        return None
    namespace = writer.get("namespace")
    by_name = {f.name: f for f in record.fields}
    readers: list[_Reader] = []
    positions: dict[str, int] = {}
    for wf in writer["fields"]:
        if not isinstance(wf, dict) or wf.get("name") in positions:
            return None
        target = by_name.get(wf["name"])
        reader = _compile(wf.get("type"), None if target is None else target.type, namespace, top=True)
        if reader is None:
            return None
        positions[wf["name"]] = len(readers)
        readers.append(reader)
    sources = [positions.get(f.name) for f in record.fields]
    if any(s is None and f.required for s, f in zip(sources, record.fields, strict=True)):
        return None  # a required field the writer lacks: fastavro reports it
    return Plan(readers, sources, to_arrow(record))


_FLAT = (_Long, _Boolean, _Bytes, _Enum)
_LOGICAL = (("bytes", "decimal"), ("long", "timestamp-micros"))


def _compile(w: Any, target: LogicalType | None, namespace: str | None, *, top: bool = False) -> _Reader | None:
    """A reader of writer type ``w`` producing ``target`` (None: read and dropped)."""
    if isinstance(w, list):
        if not top or len(w) != 2 or w.count("null") != 1:
            return None
        inner = _compile(w[1 - w.index("null")], target, namespace)
        return None if inner is None else _Optional(inner, w.index("null"))
    if isinstance(w, dict):
        kind, logical = w.get("type"), w.get("logicalType")
        if kind == "enum":
            return _enum(w, target)
        if kind in ("array", "map"):
            return _blocks(w, target, namespace)
        if not isinstance(kind, str) or (logical is not None and (kind, logical) not in _LOGICAL):
            return None  # e.g. timestamp-millis: fastavro's raw path decides
        spec = (w.get("precision"), w.get("scale", 0))
        if logical == "decimal" and isinstance(target, DecimalType) and spec != (target.precision, target.scale):
            return None
        return _compile(kind, target, namespace)
    match w, target:
        case "string", StringType() | None:
            return _Bytes()
        case "bytes", None:
            return _Bytes()
        case "bytes", DecimalType(precision=p) if p <= 38:
            return _Decimal(p)
        case "long", LongType() | TimestampType() | None:
            return _Long()
        case "boolean", BooleanType() | None:
            return _Boolean()
    return None


def _enum(w: dict[str, Any], target: LogicalType | None) -> _Reader | None:
    symbols = w.get("symbols")
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        return None
    if target is None:
        return _Enum(symbols, [True] * len(symbols))
    if not isinstance(target, EnumType) or str(w.get("name")).rsplit(".", 1)[-1] != target.name:
        return None
    return _Enum(symbols, [s in target.symbols for s in symbols])


def _blocks(w: dict[str, Any], target: LogicalType | None, namespace: str | None) -> _Reader | None:
    if w["type"] == "array":
        if target is not None and not isinstance(target, ListType):
            return None
        items = _compile(w.get("items"), None if target is None else target.element, namespace)
        keyed = False
    else:
        if target is not None and not (isinstance(target, MapType) and isinstance(target.key, StringType)):
            return None
        items = _compile(w.get("values"), None if target is None else target.value, namespace)
        keyed = True
    if not isinstance(items, _FLAT):  # nested arrays or maps, optional items: left to fastavro
        return None
    return _Blocks(items, keyed)
