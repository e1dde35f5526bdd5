"""The sink contract: where a feed runner puts what it received (the quix-streams sink shape).

A :class:`Sink` is given canonical, stamped record batches with :meth:`Sink.add` (one kind of one
venue at a time; quality events are a kind too) and makes them durable on :meth:`Sink.flush`, together with
the feed's :class:`Checkpoint` (what must be committed atomically with the rows: the platform
sequence and the completeness state per venue). The runner owns *when* to flush (one rule: rows or
age, see :class:`k2.feed.runner.FeedRunner`); the sink owns *how*. Three sinks exist:

* :class:`k2.lake.sink.IcebergSink`: embedded mode, one Iceberg commit per table per flush, the
  checkpoint in the snapshot summary, quality events committed after the rows they describe;
* :class:`k2.bus.sink.KafkaSink`: `k2 ingest`, Avro to the venue's topic per kind; ``add`` waits while
  the producer queue is full (that is the backpressure);
* :class:`k2.feed.capture.RecordingSink`: `k2 capture`, raw frames to a recording (no parsing).

Backpressure: ``add`` may suspend; the runner also stops reading sockets while ``pending_rows``
(added, not yet durable) plus frames waiting to be parsed reach the runner's limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame


@dataclass(frozen=True)
class Checkpoint:
    """Snapshot-summary properties to commit with each kind's rows (e.g. ``k2.platform-sequence.binance``)."""

    properties: Mapping[RecordKind, Mapping[str, str]] = field(default_factory=dict)

    def for_kind(self, kind: RecordKind) -> dict[str, str]:
        return dict(self.properties.get(kind, {}))


class Sink:
    """Base of every sink. Subclasses override what they need; the defaults do nothing."""

    name = "sink"
    wants_records = True  # False: the runner does not parse, it hands raw frames to add_frames

    async def add_frames(self, frames: Sequence[RawFrame]) -> None:
        """Raw frames as received (before parsing); only sinks that record frames use them."""

    async def add(self, kind: RecordKind, batch: pa.RecordBatch, venue: str) -> None:
        """Canonical rows of ``kind`` from ``venue``'s feed, deduplicated and stamped; durable after the
        next :meth:`flush`. One table per kind holds every venue (the ``exchange`` column), so the Iceberg
        sink ignores ``venue``; Kafka has a topic per venue and kind."""
        raise NotImplementedError(f"{type(self).__name__} does not take records")

    @property
    def pending_rows(self) -> int:
        """Rows added and not yet durable (the runner's flush rule and backpressure read it)."""
        return 0

    @property
    def busy(self) -> bool:
        """A flush is still in flight (the runner waits for it before stopping)."""
        return False

    async def tick(self) -> None:
        """Housekeeping once per runner loop (e.g. serving a producer's delivery reports)."""

    async def flush(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        """Start making everything added so far durable, with ``checkpoint``. At most one flush is in
        flight: when one still is, ``wait=False`` returns at once (the rows stay for the next flush)
        and ``wait=True`` waits for it, then flushes and waits for this one too. A failed flush keeps
        its rows for the next one; it never loses them."""

    async def close(self) -> None:
        """Release resources; the runner flushes with ``wait=True`` before closing."""
