"""How a canonical record evolves, and why a new table and an upgraded one end with the same field ids. Pure.

Iceberg gives a column its id in one of two ways. Creating a table assigns fresh ids: the top-level
fields 1..n in order, then the nested ones (a list's element, a map's key and value), whatever ids the
schema handed to ``create_table`` carried. Adding a column to an existing table gives it the table's
last column id + 1. K2 declares every id in the canonical record (Avro ``field-id``, the Arrow
``PARQUET:field_id`` its Parquet files carry, the planner's metrics lookups), so both ways must end
with the declared ids.

The rule that guarantees it: a kind's table is always **created from the kind's first version** (whose
ids are declared in fresh-id order) and then **evolved through the later versions, in order** (each
adds optional primitive fields with ids last + 1, last + 2, ...). A table created today and a table
created at v1 and upgraded on start run the very same steps, so they end identical.
:func:`check_history` proves a history obeys the rule (the kinds table checks it on import);
:func:`missing_fields` is the step list ``k2.lake.catalog`` applies to a table.

Avro needs the same discipline for the registry's BACKWARD compatibility: an added field is optional
with a null default, so a new reader decodes every old message.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from itertools import pairwise

from k2.schema.model import Field, ListType, LogicalType, MapType, RecordSchema


class SchemaHistoryError(ValueError):
    """A record's version history breaks the evolution rule (a programming error, found on import)."""


def fresh_ids(record: RecordSchema) -> list[int]:
    """The ids Iceberg assigns when it creates a table of ``record``'s shape, in ``record.all_ids()`` order
    of the fields they go to: top-level fields first (1..n), then each field's nested ids depth-first."""
    counter = iter(range(1, 1 << 31))
    top = {f.id: next(counter) for f in record.fields}
    nested: dict[int, int] = {}

    def visit(t: LogicalType) -> None:
        if isinstance(t, ListType):
            nested[t.element_id] = next(counter)
            visit(t.element)
        elif isinstance(t, MapType):
            nested[t.key_id] = next(counter)
            nested[t.value_id] = next(counter)
            visit(t.key)
            visit(t.value)

    for f in record.fields:
        visit(f.type)
    return [top.get(i, nested.get(i, -1)) for i in record.all_ids()]


def _nested(t: LogicalType) -> bool:
    return isinstance(t, ListType | MapType)


def added_fields(previous: RecordSchema, current: RecordSchema) -> tuple[Field, ...]:
    """The fields ``current`` appends to ``previous`` (SchemaHistoryError unless it only appends)."""
    n = len(previous.fields)
    if current.fields[:n] != previous.fields:
        raise SchemaHistoryError(
            f"{current.name} v{current.version} must keep every field of v{previous.version} unchanged, in order"
        )
    return current.fields[n:]


def _steps(history: Sequence[RecordSchema]) -> Iterator[tuple[RecordSchema, RecordSchema, tuple[Field, ...]]]:
    for previous, current in pairwise(history):
        yield previous, current, added_fields(previous, current)


def check_history(history: Sequence[RecordSchema]) -> None:
    """SchemaHistoryError unless ``history`` (oldest first) follows the rule in the module docstring."""
    if not history:
        raise SchemaHistoryError("a record needs at least one version")
    first = history[0]
    if fresh_ids(first) != first.all_ids():
        raise SchemaHistoryError(
            f"{first.name} v{first.version} must declare ids in the order Iceberg assigns them on create "
            f"(top-level 1..n, then nested): {fresh_ids(first)}, not {first.all_ids()}"
        )
    for previous, current, added in _steps(history):
        if current.name != previous.name or current.version <= previous.version:
            raise SchemaHistoryError(f"{current.name} v{current.version} does not follow v{previous.version}")
        last = max(previous.all_ids())
        for f in added:
            last += 1
            if f.required or _nested(f.type):
                raise SchemaHistoryError(
                    f"{current.name} v{current.version}: added field {f.name!r} must be optional and primitive"
                )
            if f.id != last:
                raise SchemaHistoryError(
                    f"{current.name} v{current.version}: added field {f.name!r} must have id {last} "
                    f"(the id Iceberg gives the column it adds), not {f.id}"
                )


def missing_fields(history: Sequence[RecordSchema], present: Collection[str]) -> list[Field]:
    """The fields of the later versions that a table holding the columns ``present`` lacks, in the order
    they must be added (the first version's fields are never missing from a table K2 created)."""
    missing = [f for f in history[0].fields if f.name not in present]
    if missing:
        raise SchemaHistoryError(
            f"a {history[0].name} table without {', '.join(f.name for f in missing)} was not created by K2"
        )
    return [f for _, _, added in _steps(history) for f in added if f.name not in present]


__all__ = ["SchemaHistoryError", "added_fields", "check_history", "fresh_ids", "missing_fields"]
