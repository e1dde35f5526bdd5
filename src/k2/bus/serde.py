"""Avro in the Confluent wire format, columnar: canonical Arrow batches <-> Kafka message values.

A message value is ``0x00`` (magic byte), the writer schema's registry id (4 bytes, big-endian) and
the Avro binary body. Any Confluent-compatible client decodes K2's topics.

Both directions work on whole batches, column by column, with no Python object per value:
:class:`AvroEncoder` builds every body of a batch at once (:mod:`k2.bus.avro_encode`), and
:class:`AvroDecoder` reads the messages of each writer schema together (:mod:`k2.bus.avro_decode`),
with a plan derived from that writer schema (fetched once per id from the registry, cached) and the
reader's canonical record, so added or removed optional fields follow Avro's resolution rules. A
message that path is not sure of is decoded on its own by fastavro with *raw* schemas (logical types
stripped: decimals as unscaled two's-complement bytes, timestamps as microsecond longs, converted
column by column), which also gives each bad message its exact error. benchmarks/bench_bus.py
measures both paths against the straightforward per-record way.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import fastavro
import numpy as np
import pyarrow as pa
from fastavro.read import SchemaResolutionError

from k2.bus.avro_decode import PADDING, Plan, compile_plan
from k2.bus.avro_encode import encode_bodies
from k2.errors import K2Error
from k2.schema import to_arrow, to_avro
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

MAGIC = 0
_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size  # 5


class WireFormatError(ValueError):
    """A message value that is not a Confluent-framed Avro record K2 can decode (goes to the DLQ)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # small fixed set: a metric label and a DLQ header


def _short(value: object, limit: int = 200) -> str:
    """At most ``limit`` characters of ``value``'s text (fastavro puts whole schemas in its messages)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def frame(schema_id: int, body: bytes) -> bytes:
    """The Confluent wire form of an Avro body."""
    return _HEADER.pack(MAGIC, schema_id) + body


def unframe(value: bytes | None) -> tuple[int, bytes]:
    """(schema id, Avro body) of a framed value; :class:`WireFormatError` when it is not framed."""
    if value is None or len(value) < HEADER_SIZE:
        raise WireFormatError("not_framed", f"value of {0 if value is None else len(value)} bytes: too short")
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise WireFormatError("not_framed", f"magic byte {magic}, expected {MAGIC}")
    return schema_id, value[HEADER_SIZE:]


def raw_schema(schema: Any) -> Any:
    """An Avro schema (JSON form) with every logical type replaced by its underlying type."""
    if isinstance(schema, dict):
        if "logicalType" in schema and schema.get("type") in ("bytes", "long", "int", "fixed", "string"):
            return (
                schema["type"] if schema["type"] != "fixed" else {k: v for k, v in schema.items() if k != "logicalType"}
            )
        return {k: raw_schema(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [raw_schema(x) for x in schema]
    return schema


def _decimal_fields(schema: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Top-level decimal fields of a record schema: name -> (precision, scale)."""
    out: dict[str, tuple[int, int]] = {}
    for f in schema.get("fields", []):
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for t in branches:
            if isinstance(t, dict) and t.get("logicalType") == "decimal":
                out[f["name"]] = (int(t["precision"]), int(t.get("scale", 0)))
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch builds many short-lived, acyclic dicts and lists.

    Without it the collector rescans the growing list of decoded records again and again; pausing
    it made batch decoding 16 % faster (benchmarks/results/bus.md).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- decimals: Arrow decimal128 <-> unscaled big-endian two's complement --------------------------
def decimal_array(values: Sequence[bytes | None], precision: int, scale: int) -> pa.Array:
    """A decimal128 array from Avro decimal bytes; :class:`ValueError` when one exceeds the precision."""
    ints = [None if b is None else int.from_bytes(b, "big", signed=True) for b in values]
    limit = 10**precision
    n = len(ints)
    present = [v for v in ints if v is not None]
    if any(not -limit < v < limit for v in present):
        raise ValueError(f"decimal value exceeds precision {precision}")
    typ = pa.decimal128(precision, scale)
    if len(present) != n:
        mask = pa.array([v is not None for v in ints], pa.bool_())
        filled = [0 if v is None else v for v in ints]
        return pa.Array.from_buffers(typ, n, [mask.buffers()[1], _decimal_buffer(filled)], null_count=n - len(present))
    return pa.Array.from_buffers(typ, n, [None, _decimal_buffer(present)])


def _decimal_buffer(ints: Sequence[int]) -> pa.Buffer:
    if not ints:
        return pa.py_buffer(b"")
    if min(ints) >= -(2**63) and max(ints) < 2**63:
        lo = np.array(ints, dtype=np.int64)
        words = np.empty(2 * len(ints), dtype="<i8")
        words[0::2] = lo
        words[1::2] = lo >> 63
        return pa.py_buffer(words.tobytes())
    return pa.py_buffer(b"".join(v.to_bytes(16, "little", signed=True) for v in ints))


# --- columns ---------------------------------------------------------------------------------------
def _raw_to_column(values: list[Any], t: LogicalType, arrow_type: pa.DataType) -> pa.Array:
    match t:
        case DecimalType(precision=p, scale=s):
            return decimal_array(values, p, s)
        case StringType() | EnumType() | LongType() | BooleanType() | TimestampType() | ListType() | MapType():
            return pa.array(values, arrow_type)
    raise TypeError(f"no column builder for {t!r}")  # pragma: no cover


@dataclass
class DecodeResult:
    """What a run of message values decoded to: one batch of the good ones and the bad ones' errors."""

    batch: pa.RecordBatch
    indices: list[int]  # position (in the input) of each row of ``batch``
    errors: list[tuple[int, WireFormatError]] = field(default_factory=list)


class AvroEncoder:
    """Encodes canonical Arrow batches of one record schema (trades, quality events) to Confluent-framed
    Avro values with one registered schema id, column by column (:mod:`k2.bus.avro_encode`)."""

    def __init__(self, schema_id: int, record: RecordSchema) -> None:
        self.schema_id = schema_id
        self.record = record
        self._header = _HEADER.pack(MAGIC, schema_id)

    def encode(self, batch: pa.RecordBatch) -> list[bytes]:
        """One framed value per row, in row order."""
        if batch.num_rows == 0:
            return []
        data, offsets = encode_bodies(self.record, batch, self._header)
        bounds = offsets.tolist()
        return [data[a:b] for a, b in itertools.pairwise(bounds)]


class AvroDecoder:
    """Decodes framed values to canonical Arrow batches of ``record`` (any canonical record schema),
    resolving each writer schema (by id) to it.

    ``fetch_schema(id)`` returns the writer schema (Avro JSON) registered under that id; it is called
    once per id. It raises :class:`KeyError` for an unknown id and a
    :class:`~k2.errors.K2Error` when the registry cannot be reached (propagated: the caller retries,
    nothing is dead-lettered for an outage); anything else it raises, or returns, that is not a
    usable record schema makes the id's messages :class:`WireFormatError` ``incompatible_schema``.
    What an id decodes to, or why it cannot, is cached: a registered schema never changes.

    No input makes :meth:`decode` raise anything but a registry outage: a bad message is reported
    with a reason (a dead letter for `k2 consume`, skipped by `k2 ingest`'s tail read), so no message
    can stop a consumer on every restart.

    ``columnar=False`` decodes every message on its own with fastavro: the reference the column-wise
    path must agree with (tests/unit/bus/test_avro_columns.py), slower.
    """

    def __init__(self, record: RecordSchema, fetch_schema: Callable[[int], Any], *, columnar: bool = True) -> None:
        self.record = record
        self.columnar = columnar
        self.arrow_schema = to_arrow(record)
        self._reader_json = to_avro(record)
        self._reader = fastavro.parse_schema(raw_schema(self._reader_json))
        self._decimals = _decimal_fields(self._reader_json)
        self._fetch = fetch_schema
        self._reader_form = fastavro.schema.to_parsing_canonical_form(self._reader)
        self._writers: dict[int, _Writer | WireFormatError] = {}
        self.fetches = 0

    def _writer(self, schema_id: int) -> _Writer:
        """How to read the id's messages, cached per id; :class:`WireFormatError` (cached too) when the
        id has no usable record schema."""
        cached = self._writers.get(schema_id)
        if cached is None:
            self.fetches += 1
            try:
                cached = self._resolve(schema_id)
            except WireFormatError as exc:
                cached = exc
            self._writers[schema_id] = cached
        if isinstance(cached, WireFormatError):
            raise cached
        return cached

    def _resolve(self, schema_id: int) -> _Writer:
        try:
            writer_json = self._fetch(schema_id)
        except KeyError:
            raise WireFormatError("unknown_schema", f"schema id {schema_id} is not in the registry") from None
        except K2Error:
            raise  # the registry is unreachable: not the message's fault
        except Exception as exc:  # a schema the registry holds but that cannot be read
            raise WireFormatError("incompatible_schema", f"schema {schema_id} cannot be read: {exc}") from exc
        if not isinstance(writer_json, dict) or writer_json.get("type") != "record":
            kind = writer_json.get("type") if isinstance(writer_json, dict) else writer_json
            raise WireFormatError(
                "incompatible_schema", f"schema {schema_id} is a {_short(kind)} schema, not a {self.record.name} record"
            )
        try:
            writer_decimals = _decimal_fields(writer_json)
            parsed = fastavro.parse_schema(raw_schema(writer_json))
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise WireFormatError("incompatible_schema", f"schema {schema_id} is not usable: {exc}") from exc
        for name, spec in writer_decimals.items():
            if name in self._decimals and spec != self._decimals[name]:
                raise WireFormatError(
                    "incompatible_schema",
                    f"field {name!r} is decimal{spec} in schema {schema_id}, expected {self._decimals[name]}",
                )
        same = fastavro.schema.to_parsing_canonical_form(parsed) == self._reader_form
        plan = compile_plan(writer_json, self.record) if self.columnar else None
        return _Writer(parsed, None if same else self._reader, plan)

    def decode_one(self, value: bytes | None) -> dict[str, Any]:
        """One value to a dict in the raw form (decimal bytes, timestamp longs)."""
        schema_id, _ = unframe(value)
        assert value is not None
        writer, reader, _ = self._writer(schema_id)
        fo = io.BytesIO(value)
        fo.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(fo, writer, reader)
        except SchemaResolutionError as exc:  # e.g. another record type, an enum symbol the reader lacks
            name = writer.get("name", "?") if isinstance(writer, dict) else "?"
            raise WireFormatError(
                "incompatible_schema",
                f"schema {schema_id} ({name}) does not resolve to {self.record.name}: {_short(exc)}",
            ) from exc
        except Exception as exc:  # truncated or corrupt bodies raise EOFError, ValueError, ...
            raise WireFormatError("undecodable", f"{type(exc).__name__}: {_short(exc)}") from exc
        if fo.tell() != len(value):
            raise WireFormatError("undecodable", f"{len(value) - fo.tell()} trailing bytes after the record")
        if not isinstance(record, dict):  # pragma: no cover - the writer schema is a record
            raise WireFormatError("undecodable", "not a record")
        return record

    def decode(self, values: Iterable[bytes | None]) -> DecodeResult:
        """Decode values; the good ones become one batch, the bad ones are reported, never raised.

        The messages of each writer schema id are decoded together, column by column
        (:mod:`k2.bus.avro_decode`); the messages that path is not sure of (bad framing, an id without
        a usable schema, a schema pair it does not handle, a suspect body) are decoded one by one with
        fastavro (:meth:`decode_one`), which gives each its exact value or error.
        """
        values = values if isinstance(values, list) else list(values)
        n = len(values)
        present = [b"" if v is None else v for v in values]
        sizes = np.fromiter(map(len, present), np.int64, n)
        buf = np.frombuffer(b"".join(present) + bytes(PADDING), np.uint8)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        framed = np.nonzero(sizes >= HEADER_SIZE)[0]
        framed = framed[buf[starts[framed]] == MAGIC]
        ids = np.full(n, -1, np.int64)
        id_bytes = buf[(starts[framed] + 1)[:, None] + np.arange(4)].astype(np.int64)  # 4 bytes, big-endian
        ids[framed] = (id_bytes[:, 0] << 24) | (id_bytes[:, 1] << 16) | (id_bytes[:, 2] << 8) | id_bytes[:, 3]
        one_by_one = np.ones(n, bool)
        one_by_one[framed] = False
        batches: list[pa.RecordBatch] = []
        indices: list[np.ndarray] = []
        for schema_id in np.unique(ids[framed]).tolist():
            rows = np.nonzero(ids == schema_id)[0]
            try:
                plan = self._writer(schema_id).plan
            except WireFormatError:
                plan = None  # every message of the id gets the id's error below
            if plan is None:
                one_by_one[rows] = True
                continue
            batch, suspect = plan.decode(buf, starts[rows] + HEADER_SIZE, ends[rows])
            one_by_one[rows[suspect]] = True
            batches.append(batch)
            indices.append(rows[~suspect])
        errors: list[tuple[int, WireFormatError]] = []
        rest = np.nonzero(one_by_one)[0].tolist()
        if rest:
            batch, good, errors = self._decode_each([(i, values[i]) for i in rest])
            batches.append(batch)
            indices.append(np.array(good, np.int64))
        return _merge(batches, indices, errors, self.arrow_schema)

    def _decode_each(
        self, values: list[tuple[int, bytes | None]]
    ) -> tuple[pa.RecordBatch, list[int], list[tuple[int, WireFormatError]]]:
        """(index, value) pairs decoded one by one: the batch of the good ones, their indices, the errors."""
        rows: list[dict[str, Any]] = []
        indices: list[int] = []
        errors: list[tuple[int, WireFormatError]] = []
        with _gc_paused():
            for i, value in values:
                try:
                    rows.append(self.decode_one(value))
                    indices.append(i)
                except WireFormatError as exc:
                    errors.append((i, exc))
            batch = self.to_batch(rows)
        if isinstance(batch, str):  # a value the column cannot hold (a decimal out of range): find it row by row
            good: list[dict[str, Any]] = []
            good_idx: list[int] = []
            for row, i in zip(rows, indices, strict=True):
                problem = self.to_batch([row])
                if isinstance(problem, str):
                    errors.append((i, WireFormatError("invalid_value", problem)))
                else:
                    good.append(row)
                    good_idx.append(i)
            rows, indices = good, good_idx
            batch = self.to_batch(rows)
            assert not isinstance(batch, str)
            errors.sort(key=lambda e: e[0])
        return batch, indices, errors

    def to_batch(self, rows: list[dict[str, Any]]) -> pa.RecordBatch | str:
        """Raw dicts to a canonical batch, or why a value does not fit its column."""
        arrays = []
        for f, arrow_field in zip(self.record.fields, self.arrow_schema, strict=True):
            values = [r[f.name] for r in rows]
            try:
                arrays.append(_raw_to_column(values, f.type, arrow_field.type))
            except (ValueError, TypeError, pa.ArrowException) as exc:
                return f"field {f.name!r}: {_short(exc)}"
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)


class _Writer(NamedTuple):
    """What an id's writer schema needs: fastavro's parsed writer, the reader when resolution is needed
    (None when the schemas are the same), and the column-wise plan (None: decoded one by one)."""

    parsed: Any
    reader: Any
    plan: Plan | None


def _merge(
    batches: list[pa.RecordBatch],
    indices: list[np.ndarray],
    errors: list[tuple[int, WireFormatError]],
    schema: pa.Schema,
) -> DecodeResult:
    """One batch of the decoded rows in input order."""
    if len(batches) == 1:
        return DecodeResult(batches[0], indices[0].tolist(), errors)
    if not batches:
        return DecodeResult(pa.RecordBatch.from_pylist([], schema=schema), [], errors)
    order = np.concatenate(indices)
    sort = np.argsort(order, kind="stable")
    return DecodeResult(pa.concat_batches(batches).take(pa.array(sort)), order[sort].tolist(), errors)


def schema_json(record: RecordSchema) -> str:
    """The Avro schema text registered for a canonical record."""
    return json.dumps(to_avro(record), separators=(",", ":"))
