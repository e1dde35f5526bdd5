"""Derive the Iceberg schema (with the declared field ids) from a canonical record."""

from __future__ import annotations

from pyiceberg import types as it
from pyiceberg.schema import Schema

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


def _iceberg_type(t: LogicalType) -> it.IcebergType:
    match t:
        case StringType() | EnumType():
            return it.StringType()
        case LongType():
            return it.LongType()
        case BooleanType():
            return it.BooleanType()
        case DecimalType(precision=p, scale=s):
            return it.DecimalType(p, s)
        case TimestampType():
            return it.TimestamptzType()
        case ListType(element_id=eid, element=element):
            return it.ListType(element_id=eid, element_type=_iceberg_type(element), element_required=True)
        case MapType(key_id=kid, value_id=vid, key=key, value=value):
            return it.MapType(
                key_id=kid,
                key_type=_iceberg_type(key),
                value_id=vid,
                value_type=_iceberg_type(value),
                value_required=True,
            )
    raise TypeError(f"no Iceberg form for {t!r}")


def to_iceberg(record: RecordSchema) -> Schema:
    """The Iceberg schema, field ids as declared."""
    return Schema(
        *[
            it.NestedField(field_id=f.id, name=f.name, field_type=_iceberg_type(f.type), required=f.required, doc=f.doc)
            for f in record.fields
        ]
    )
