"""IcebergSink: the embedded pipeline's sink. Each kind's rows go to that kind's table, one commit per
table per flush, with the feed's checkpoint in the same snapshot summary.

Rows are buffered per kind in memory; a flush hands the buffers to one background commit (at most
one in flight, so commits land in the order rows were received) and parsing goes on meanwhile.
Market kinds (trades, quotes) are committed first, quality events last, so an event never describes
rows that are not committed yet (a RESOLVED gap's trades are committed before its RESOLVED row);
only a gap's OPEN row goes before the rows (see :meth:`IcebergSink._commit`). A
failed commit puts its rows back in front of the buffer (and holds the events back), so the next
flush retries them; nothing is dropped. :func:`recovered_properties` reads a table's committed
checkpoint back on start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import LakeSettings
from k2.feed.sink import Checkpoint, Sink
from k2.lake.catalog import load_or_create_table, table_identifier
from k2.lake.writer import TableWriter
from k2.logging import get_logger
from k2.metrics import LAKE_COMMIT_FAILURES
from k2.schema.kinds import RecordKind
from k2.schema.quality_event import EventStatus

log = get_logger(__name__)

CHECKPOINT_PREFIX = "k2."
_MAX_BACKOFF_S = 5.0


def recovered_properties(table: Table, prefix: str = CHECKPOINT_PREFIX) -> dict[str, str]:
    """For each summary property starting with ``prefix``, its value in the newest snapshot that has it."""
    found: dict[str, str] = {}
    for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        summary = snapshot.summary
        extra = summary.additional_properties if summary else {}
        for key, value in extra.items():
            if key.startswith(prefix) and key not in found:
                found[key] = value
    return found


def _split_opened(batches: Sequence[pa.RecordBatch]) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """Quality-event rows with status OPEN, and the others."""
    table = pa.Table.from_batches(batches).combine_chunks()
    is_open = pc.equal(table.column("status"), EventStatus.OPEN.value)
    opened, rest = table.filter(is_open), table.filter(pc.invert(is_open))
    return _one_batch(opened), _one_batch(rest)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


class IcebergSink(Sink):
    """Commits each kind's rows to its Iceberg table (see the module docstring)."""

    name = "iceberg"

    def __init__(self, catalog: Catalog, lake: LakeSettings, kinds: Iterable[RecordKind]) -> None:
        self._lake = lake
        order = sorted(set(kinds), key=lambda k: k is RecordKind.QUALITY_EVENTS)  # events last
        self.tables: dict[RecordKind, Table] = {k: load_or_create_table(catalog, lake, k) for k in order}
        self.writers = {k: TableWriter(catalog, table_identifier(lake, k), lake) for k in order}
        self._labels = {k: ".".join(table_identifier(lake, k)) for k in order}
        for label in self._labels.values():
            LAKE_COMMIT_FAILURES.labels(table=label)  # exported as 0 from the start
        self._buffers: dict[RecordKind, list[pa.RecordBatch]] = {k: [] for k in order}
        self._rows: dict[RecordKind, int] = dict.fromkeys(order, 0)
        self._inflight: asyncio.Task[None] | None = None
        self.rows_committed: dict[RecordKind, int] = dict.fromkeys(order, 0)
        self.commits = 0
        self.commit_failures = 0
        self.last_commit_at: datetime | None = None

    # --- Sink -----------------------------------------------------------------------------------
    async def add(self, kind: RecordKind, batch: pa.RecordBatch, venue: str) -> None:
        if batch.num_rows:
            self._buffers[kind].append(batch)
            self._rows[kind] += batch.num_rows

    @property
    def pending_rows(self) -> int:
        return sum(self._rows.values())

    @property
    def busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def flush(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        if self._inflight is not None:
            if not self._inflight.done() and not wait:
                return
            await asyncio.wait([self._inflight])
            self._inflight = None
        if self.pending_rows == 0:
            return
        taken = {k: (b, self._rows[k]) for k, b in self._buffers.items() if b}
        for kind in taken:
            self._buffers[kind], self._rows[kind] = [], 0
        self._inflight = asyncio.create_task(self._commit(taken, checkpoint))
        if wait:
            await asyncio.wait([self._inflight])
            self._inflight = None

    async def close(self) -> None:
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
            self._inflight = None

    def get_stats(self) -> dict[str, Any]:
        return {
            "rows_committed": {k.value: v for k, v in self.rows_committed.items()},
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "last_commit_at": self.last_commit_at.isoformat() if self.last_commit_at else None,
            "buffered_rows": self.pending_rows,
            "writers": {k.value: w.get_stats() for k, w in self.writers.items()},
        }

    # --- internals ------------------------------------------------------------------------------
    async def _commit(self, taken: Mapping[RecordKind, tuple[list[pa.RecordBatch], int]], cp: Checkpoint) -> None:
        """Commit each kind's rows; quality events after the rows they describe, except a gap's OPEN
        row, which goes first: the trades may hold rows backfilled for it, and a crash between the
        commits must not leave those rows without their gap's record (a restart settles an OPEN gap
        whose rows are stored)."""
        work = dict(taken)
        events = work.pop(RecordKind.QUALITY_EVENTS, None)
        if events is not None and len(work):
            opened, rest = _split_opened(events[0])
            if opened.num_rows and await self._append(RecordKind.QUALITY_EVENTS, [opened], opened.num_rows, {}):
                events = ([rest], rest.num_rows) if rest.num_rows else None
        failed = False
        for kind, (batches, rows) in work.items():  # market kinds, in the sink's order
            if not await self._append(kind, batches, rows, cp.for_kind(kind)):
                failed = True
        if events is not None:
            if failed:  # the rows these events describe are not committed yet
                self._restore(RecordKind.QUALITY_EVENTS, *events)
            else:
                await self._append(
                    RecordKind.QUALITY_EVENTS, events[0], events[1], cp.for_kind(RecordKind.QUALITY_EVENTS)
                )
        if failed:
            await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * self.commit_failures))

    async def _append(
        self, kind: RecordKind, batches: Sequence[pa.RecordBatch], rows: int, props: dict[str, str]
    ) -> bool:
        try:
            result = await asyncio.to_thread(self.writers[kind].append, batches, props)
        except Exception as exc:  # keep the rows: the next flush retries them
            self.commit_failures += 1
            LAKE_COMMIT_FAILURES.labels(table=self._labels[kind]).inc()
            log.error("sink.commit_failed", table=self._labels[kind], rows=rows, error=str(exc),
                      error_type=type(exc).__name__)  # fmt: skip
            self._restore(kind, batches, rows)
            return False
        self.rows_committed[kind] += result.rows
        self.commits += 1
        self.last_commit_at = datetime.now(tz=UTC)
        return True

    def _restore(self, kind: RecordKind, batches: Sequence[pa.RecordBatch], rows: int) -> None:
        self._buffers[kind] = [*batches, *self._buffers[kind]]
        self._rows[kind] += rows
