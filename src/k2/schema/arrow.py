"""Derive the Arrow schema (the in-memory, columnar form of every batch) from a canonical record."""

from __future__ import annotations

import pyarrow as pa

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

FIELD_ID_KEY = b"PARQUET:field_id"


def _arrow_type(t: LogicalType) -> pa.DataType:
    match t:
        case StringType() | EnumType():
            return pa.string()
        case LongType():
            return pa.int64()
        case BooleanType():
            return pa.bool_()
        case DecimalType(precision=p, scale=s):
            return pa.decimal128(p, s)
        case TimestampType():
            return pa.timestamp("us", tz="UTC")
        case ListType(element_id=eid, element=element):
            return pa.list_(pa.field("element", _arrow_type(element), False, {FIELD_ID_KEY: str(eid)}))
        case MapType(key_id=kid, value_id=vid, key=key, value=value):
            return pa.map_(
                pa.field("key", _arrow_type(key), False, {FIELD_ID_KEY: str(kid)}),
                pa.field("value", _arrow_type(value), False, {FIELD_ID_KEY: str(vid)}),
            )
    raise TypeError(f"no Arrow form for {t!r}")


def to_arrow(record: RecordSchema) -> pa.Schema:
    """The Arrow schema; each field carries its Iceberg field id as Parquet metadata."""
    return pa.schema(
        [pa.field(f.name, _arrow_type(f.type), not f.required, {FIELD_ID_KEY: str(f.id)}) for f in record.fields],
        metadata={b"k2.record": record.name.encode(), b"k2.schema_version": str(record.version).encode()},
    )
