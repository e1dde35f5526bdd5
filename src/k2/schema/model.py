"""The canonical schema model: a record is a list of fields with stable ids and logical types.

Each record (trade, and later quote, ...) is declared once with these types; ``avro.py``,
``arrow.py`` and ``iceberg.py`` derive the other forms by walking the same tree. Field ids are part
of the declaration and never reused, so Iceberg evolution and Avro ``field-id`` attributes agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class StringType:
    pass


@dataclass(frozen=True)
class LongType:
    pass


@dataclass(frozen=True)
class BooleanType:
    pass


@dataclass(frozen=True)
class DecimalType:
    """Exact decimal. Stored as Iceberg decimal(p, s), Arrow decimal128(p, s), Avro bytes+decimal."""

    precision: int
    scale: int


@dataclass(frozen=True)
class TimestampType:
    """UTC instant with microsecond precision (Iceberg timestamptz, Avro timestamp-micros)."""


@dataclass(frozen=True)
class EnumType:
    """A closed set of symbols: an Avro enum, a string in Arrow and Iceberg (Iceberg has no enum)."""

    name: str
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class ListType:
    element_id: int
    element: LogicalType


@dataclass(frozen=True)
class MapType:
    key_id: int
    value_id: int
    key: LogicalType
    value: LogicalType


LogicalType: TypeAlias = (
    StringType | LongType | BooleanType | DecimalType | TimestampType | EnumType | ListType | MapType
)


@dataclass(frozen=True)
class Field:
    id: int
    name: str
    type: LogicalType
    doc: str
    required: bool = True


@dataclass(frozen=True)
class RecordSchema:
    """A canonical record: name, version and ordered fields."""

    name: str
    namespace: str
    version: int
    doc: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def all_ids(self) -> list[int]:
        """Every field id in the tree (top-level and nested), for uniqueness checks."""
        ids: list[int] = []
        for f in self.fields:
            ids.append(f.id)
            ids.extend(_nested_ids(f.type))
        return ids


def _nested_ids(t: LogicalType) -> list[int]:
    if isinstance(t, ListType):
        return [t.element_id, *_nested_ids(t.element)]
    if isinstance(t, MapType):
        return [t.key_id, t.value_id, *_nested_ids(t.key), *_nested_ids(t.value)]
    return []
