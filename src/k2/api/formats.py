"""Response formats: JSON, CSV, Arrow IPC stream and Parquet, encoded batch by batch for streaming.

The format is chosen by the ``format`` query parameter, else by the ``Accept`` header (JSON when it
names none of ours or ``*/*``; 406 when it names only types we cannot produce). Every encoder turns
Arrow record batches into bytes as they arrive, so a result is never materialised as a whole:

- JSON: an object with the rows in a list (``data`` of objects, or SQL's ``rows`` of arrays); decimals
  are strings (msgspec writes ``Decimal`` as text), times RFC 3339 UTC. Fields known only at the end
  (``truncated``, ``row_count``) come after the list.
- CSV: RFC 4180 with a header; decimals exact, times ``2024-08-08 23:54:15.342000Z``; nested values
  (lists, maps, structs) as JSON text.
- Arrow IPC stream and Parquet: the exact Arrow types (``decimal128(38, 12)``, ``timestamp[us, UTC]``);
  a Parquet row group per batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq


class Format(StrEnum):
    JSON = "json"
    CSV = "csv"
    ARROW = "arrow"
    PARQUET = "parquet"


MEDIA_TYPES: dict[Format, str] = {
    Format.JSON: "application/json",
    Format.CSV: "text/csv",
    Format.ARROW: "application/vnd.apache.arrow.stream",
    Format.PARQUET: "application/vnd.apache.parquet",
}
_BY_MEDIA = {media: fmt for fmt, media in MEDIA_TYPES.items()} | {
    "application/x-parquet": Format.PARQUET,
    "application/vnd.apache.arrow.file": Format.ARROW,  # we send the stream form; readers accept it
}
_ANY = ("*/*", "application/*")


class NotAcceptable(ValueError):
    """The Accept header names no type this service can produce."""


def negotiate(fmt: Format | None, accept: str | None) -> Format:
    """``fmt`` if given; else the Accept header's preferred supported type; else JSON."""
    if fmt is not None:
        return fmt
    if not accept or not accept.strip():
        return Format.JSON
    best: tuple[float, int, Format] | None = None
    named_any = False
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        found = Format.JSON if media in _ANY else _BY_MEDIA.get(media)
        named_any |= media in _ANY
        if found is not None and (best is None or (q, -position) > (best[0], best[1])):
            best = (q, -position, found)
    if best is not None:
        return best[2]
    if named_any:
        return Format.JSON
    raise NotAcceptable(f"none of the requested types is available: {', '.join(MEDIA_TYPES.values())}")


# --- encoders -------------------------------------------------------------------------------------
class _Sink(io.RawIOBase):
    """A write-only file that hands out what was written since the last :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


_JSON = msgspec.json.Encoder(enc_hook=str)  # Decimal -> "1.5"; anything exotic from SQL -> its text


def _python(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values for JSON. Decimals and zoned timestamps become text in Arrow (exact, and much
    faster than building ``Decimal``/``datetime`` objects); maps become objects."""
    kind = column.type
    if pa.types.is_decimal(kind):
        column = pc.cast(column, pa.string())
    elif pa.types.is_timestamp(kind) and kind.tz is not None:
        column = pc.strftime(pc.cast(column, pa.timestamp(kind.unit, "UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    values: list[Any] = column.to_pylist()
    if pa.types.is_map(kind):
        return [None if v is None else dict(v) for v in values]
    return values


class Encoder:
    """Turns a stream of record batches into response bytes; see the module docstring per format."""

    media_type: str

    def start(self, schema: pa.Schema) -> bytes:
        raise NotImplementedError

    def write(self, batch: pa.RecordBatch) -> bytes:
        raise NotImplementedError

    def finish(self, trailer: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


class JsonEncoder(Encoder):
    """``{<head fields>, "<key>": [rows...], <trailer fields>}``; rows as objects or (SQL) arrays."""

    media_type = MEDIA_TYPES[Format.JSON]

    def __init__(
        self,
        head: Mapping[str, Any] | Callable[[pa.Schema], Mapping[str, Any]] = {},  # noqa: B006 - never mutated
        key: str = "data",
        arrays: bool = False,
        prerendered: bool = False,
    ) -> None:
        self._head = head
        self._key = key
        self._arrays = arrays
        self._prerendered = prerendered  # batches of one string column, each value a row's JSON text
        self._first = True

    def start(self, schema: pa.Schema) -> bytes:
        head = self._head(schema) if callable(self._head) else self._head
        prefix = _JSON.encode(dict(head))[:-1]  # '{...' without the closing brace
        return prefix + (b"," if head else b"") + _JSON.encode(self._key) + b":["

    def write(self, batch: pa.RecordBatch) -> bytes:
        if batch.num_rows == 0:
            return b""
        if self._prerendered:  # joined in Arrow: no Python object per row
            rows_json = batch.column(0)
            whole = pa.ListArray.from_arrays(pa.array([0, len(rows_json)], pa.int32()), rows_json)
            body = pc.binary_join(whole, ",")[0].as_py().encode()
            if not self._first:
                body = b"," + body
            self._first = False
            return bytes(body)
        columns = [_python(c) for c in batch.columns]
        if self._arrays:
            rows: list[Any] = [list(r) for r in zip(*columns, strict=True)]
        else:
            names = batch.schema.names
            rows = [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]
        body = _JSON.encode(rows)[1:-1]
        if not self._first:
            body = b"," + body
        self._first = False
        return body

    def finish(self, trailer: Mapping[str, Any]) -> bytes:
        tail = _JSON.encode(dict(trailer))[1:] if trailer else b"}"
        return b"]" + (b"," if trailer else b"") + tail


_CSV_NATIVE = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_decimal,
    pa.types.is_timestamp,
    pa.types.is_date,
    pa.types.is_null,
)


def _csv_column(column: pa.Array) -> pa.Array:
    if any(check(column.type) for check in _CSV_NATIVE):
        return column
    text = [None if v is None else _JSON.encode(v).decode() for v in _python(column)]
    return pa.array(text, pa.string())


class CsvEncoder(Encoder):
    media_type = MEDIA_TYPES[Format.CSV] + "; charset=utf-8"

    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer: pa_csv.CSVWriter | None = None
        self._schema = pa.schema([])

    def _csv_schema(self, schema: pa.Schema) -> pa.Schema:
        fields = [f if any(c(f.type) for c in _CSV_NATIVE) else pa.field(f.name, pa.string()) for f in schema]
        return pa.schema(fields)

    def start(self, schema: pa.Schema) -> bytes:
        self._schema = self._csv_schema(schema)
        self._writer = pa_csv.CSVWriter(self._sink, self._schema)
        return self._sink.take()

    def write(self, batch: pa.RecordBatch) -> bytes:
        assert self._writer is not None
        converted = pa.RecordBatch.from_arrays([_csv_column(c) for c in batch.columns], schema=self._schema)
        self._writer.write_batch(converted)
        return self._sink.take()

    def finish(self, trailer: Mapping[str, Any]) -> bytes:
        assert self._writer is not None
        self._writer.close()
        return self._sink.take()


class ArrowEncoder(Encoder):
    media_type = MEDIA_TYPES[Format.ARROW]

    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def start(self, schema: pa.Schema) -> bytes:
        self._writer = pa.ipc.new_stream(self._sink, schema)
        return self._sink.take()

    def write(self, batch: pa.RecordBatch) -> bytes:
        assert self._writer is not None
        self._writer.write_batch(batch)
        return self._sink.take()

    def finish(self, trailer: Mapping[str, Any]) -> bytes:
        assert self._writer is not None
        self._writer.close()
        return self._sink.take()


class ParquetEncoder(Encoder):
    media_type = MEDIA_TYPES[Format.PARQUET]

    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer: pq.ParquetWriter | None = None

    def start(self, schema: pa.Schema) -> bytes:
        self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")
        return self._sink.take()

    def write(self, batch: pa.RecordBatch) -> bytes:
        assert self._writer is not None
        if batch.num_rows:
            self._writer.write_batch(batch)
        return self._sink.take()

    def finish(self, trailer: Mapping[str, Any]) -> bytes:
        assert self._writer is not None
        self._writer.close()
        return self._sink.take()


def encoder(fmt: Format, json: Callable[[], JsonEncoder] = JsonEncoder) -> Encoder:
    """A fresh encoder for ``fmt`` (``json`` builds the endpoint's JSON envelope)."""
    if fmt is Format.JSON:
        return json()
    if fmt is Format.CSV:
        return CsvEncoder()
    if fmt is Format.ARROW:
        return ArrowEncoder()
    return ParquetEncoder()
