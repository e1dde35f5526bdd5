"""Data retention: drop whole days older than N days from a time-partitioned table (off by default).

The cutoff is the UTC midnight starting the day that holds ``now - days``: rows before it are
deleted, so at most one extra day is kept and every deleted partition goes whole. K2's tables are
partitioned by day, so the delete only drops files from the metadata (an Iceberg ``delete``
snapshot, carrying the parent's custom properties forward); the files themselves are deleted when
that parent snapshot expires (after ``snapshot_grace_s``, so running queries finish first).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import LessThan
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, YearTransform

from k2.errors import CommitConflict, LakeError
from k2.lake.maintenance import carried_properties

OPERATION = "retention"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def retention_cutoff(now: datetime, days: int) -> datetime:
    """UTC midnight of the day holding ``now - days``: rows before it are dropped."""
    day = (now.astimezone(UTC) - timedelta(days=days)).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def time_column(table: Table) -> str:
    """The column the table's partition spec cuts by time (e.g. ``timestamp`` for ``day(timestamp)``)."""
    for spec_field in table.spec().fields:
        if isinstance(spec_field.transform, DayTransform | HourTransform | MonthTransform | YearTransform):
            return table.schema().find_column_name(spec_field.source_id) or ""
    raise LakeError(f"retention needs a table partitioned by time; {'.'.join(table.name())} is not")


def drop_before(table: Table, cutoff: datetime) -> int | None:
    """Delete every row of ``table`` older than ``cutoff``; the new snapshot id, or None when there
    was nothing to delete. :class:`~k2.errors.CommitConflict` when another commit came first."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return None
    column = time_column(table)
    micros = (cutoff - _EPOCH) // timedelta(microseconds=1)
    less_than: Any = LessThan  # pyiceberg predicates are typed per field by the pydantic mypy plugin
    predicate = less_than(column, micros)
    if not any(True for _ in table.scan(row_filter=predicate).plan_files()):
        return None  # (pyiceberg warns on a delete that matches nothing)
    tx = table.transaction()
    tx.delete(predicate, snapshot_properties=carried_properties(snapshot, OPERATION))
    try:
        tx.commit_transaction()
    except CommitFailedException as exc:
        raise CommitConflict(f"retention of {'.'.join(table.name())} conflicted: {exc}") from exc
    head = table.current_snapshot()
    return None if head is None or head.snapshot_id == snapshot.snapshot_id else int(head.snapshot_id)
