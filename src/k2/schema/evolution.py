"""How a canonical record evolves, and why a new table and an upgraded one end with the same field ids. Pure.

Iceberg gives a column its id in one of two ways. Creating a table assigns fresh ids: the top-level
fields 1..n in order, then the nested ones (a list's element, a map's key and value), whatever ids the
schema handed to ``create_table`` carried. Adding a column to an existing table gives it the table's
last column id + 1. K2 declares every id in the canonical record (Avro ``field-id``, the Arrow
``PARQUET:field_id`` its Parquet files carry, the planner's metrics lookups), so both ways must end
with the declared ids.

The rule that guarantees it: a kind's table is always **created from the kind's first version** (whose
ids are declared in fresh-id order) and then **evolved through the later versions, in order**. A step
may do two things, both safe Iceberg evolutions: append optional primitive fields with ids last + 1,
last + 2, ... (Trade v3's ``instrument``), and relax required fields to optional (Quote v2's
``bid_size``/``ask_size``); every earlier field keeps its id, name and type, in order. A table created
today and a table created at v1 and upgraded on start run the very same steps, so they end identical.
:func:`check_history` proves a history obeys the rule (the kinds table checks it on import);
:func:`missing_fields` and :func:`relaxed_fields` are the steps ``k2.lake.catalog`` applies to a table.

Avro needs the same discipline for the registry's BACKWARD compatibility: an added field is optional
with a null default, and a relaxed one becomes a union with null, so a new reader decodes every old
message.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Step:
    """What one version changes in the previous one's table."""

    added: tuple[Field, ...]  # appended fields, optional and primitive
    relaxed: tuple[Field, ...]  # fields the previous version required and this one does not (as now declared)


def step(previous: RecordSchema, current: RecordSchema) -> Step:
    """The step from ``previous`` to ``current`` (SchemaHistoryError unless it only appends and relaxes)."""
    n = len(previous.fields)
    kept = current.fields[:n]
    if len(kept) < n or any(
        (a.id, a.name, a.type) != (b.id, b.name, b.type) or (b.required and not a.required)
        for a, b in zip(previous.fields, kept, strict=True)
    ):
        raise SchemaHistoryError(
            f"{current.name} v{current.version} must keep every field of v{previous.version} (same id, name and "
            "type, in order; a required field may become optional, never the reverse)"
        )
    relaxed = tuple(b for a, b in zip(previous.fields, kept, strict=True) if a.required and not b.required)
    return Step(current.fields[n:], relaxed)


def _steps(history: Sequence[RecordSchema]) -> Iterator[tuple[RecordSchema, RecordSchema, Step]]:
    for previous, current in pairwise(history):
        yield previous, current, step(previous, current)


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
    for previous, current, change in _steps(history):
        if current.name != previous.name or current.version <= previous.version:
            raise SchemaHistoryError(f"{current.name} v{current.version} does not follow v{previous.version}")
        last = max(previous.all_ids())
        for f in change.added:
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
    return [f for _, _, change in _steps(history) for f in change.added if f.name not in present]


def relaxed_fields(history: Sequence[RecordSchema], required: Collection[str]) -> list[Field]:
    """The fields the later versions made optional that a table still holds as ``required`` columns, as the
    last version declares them (its doc), in version order."""
    last = {f.name: f for f in history[-1].fields}
    names = [f.name for _, _, change in _steps(history) for f in change.relaxed if f.name in required]
    return [last[name] for name in dict.fromkeys(names) if not last[name].required]


__all__ = ["SchemaHistoryError", "Step", "check_history", "fresh_ids", "missing_fields", "relaxed_fields", "step"]
