"""Derive the Avro schema (Confluent wire format payload) from a canonical record."""

from __future__ import annotations

from typing import Any

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


def _avro_type(t: LogicalType, namespace: str) -> Any:
    match t:
        case StringType():
            return "string"
        case LongType():
            return "long"
        case BooleanType():
            return "boolean"
        case DecimalType(precision=p, scale=s):
            return {"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}
        case TimestampType():
            return {"type": "long", "logicalType": "timestamp-micros"}
        case EnumType(name=name, symbols=symbols):
            return {"type": "enum", "name": name, "namespace": namespace, "symbols": list(symbols)}
        case ListType(element_id=eid, element=element):
            return {"type": "array", "items": _avro_type(element, namespace), "element-id": eid}
        case MapType(key_id=kid, value_id=vid, value=value):
            return {"type": "map", "values": _avro_type(value, namespace), "key-id": kid, "value-id": vid}
    raise TypeError(f"no Avro form for {t!r}")


def to_avro(record: RecordSchema) -> dict[str, Any]:
    """The Avro record schema (a JSON-able dict). Optional fields are ``["null", T]`` with null default."""
    fields: list[dict[str, Any]] = []
    for f in record.fields:
        avro_t = _avro_type(f.type, record.namespace)
        entry: dict[str, Any] = {"name": f.name, "doc": f.doc, "field-id": f.id}
        if f.required:
            entry["type"] = avro_t
        else:
            entry["type"] = ["null", avro_t]
            entry["default"] = None
        fields.append(entry)
    return {
        "type": "record",
        "name": record.name,
        "namespace": record.namespace,
        "doc": f"{record.doc} [k2 schema version {record.version}]",
        "fields": fields,
    }
