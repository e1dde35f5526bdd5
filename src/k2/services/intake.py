"""TradeIntake: what both streaming services do to the frames they receive, before their sink.

Frames -> venue parser (columnar) -> rejects to the quarantine -> sequence tracking, duplicates
dropped, quality checks (:class:`~k2.services.completeness.Completeness`) -> ``platform_sequence``
numbered densely from the next free value. The embedded pipeline buffers the result for its Iceberg
writer; `k2 ingest` produces it to Kafka. Rows fetched by backfill are numbered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from k2.lake.quarantine import Quarantine
from k2.metrics import RECORDS_NORMALIZED
from k2.services.completeness import Completeness
from k2.sources import DataType, RawFrame, VenueAdapter
from k2.sources.session import wall_clock_us


@dataclass
class Parsed:
    """One run of frames after the intake: the trades to keep (None when there are none) and how
    many frames were rejected."""

    trades: pa.RecordBatch | None
    rejected: int


class TradeIntake:
    """Parses, checks, deduplicates and numbers one venue's trades."""

    def __init__(
        self,
        adapter: VenueAdapter,
        quarantine: Quarantine,
        completeness: Completeness,
        *,
        next_sequence: int,
        is_sample_data: bool,
    ) -> None:
        self.adapter = adapter
        self.quarantine = quarantine
        self.completeness = completeness
        self.next_sequence = next_sequence  # the platform_sequence of the next row kept
        self.is_sample_data = is_sample_data

    def parse(self, frames: list[RawFrame]) -> Parsed:
        parsed = self.adapter.parse(
            frames, first_platform_sequence=self.next_sequence, is_sample_data=self.is_sample_data
        )
        self.quarantine.add(parsed.rejected)
        self.completeness.rejected(parsed.rejected)
        batch = parsed.records.get(DataType.TRADES)
        if batch is None or batch.num_rows == 0:
            return Parsed(None, len(parsed.rejected))
        RECORDS_NORMALIZED.labels(venue=self.adapter.venue, data_type=DataType.TRADES.value).inc(batch.num_rows)
        out = self.completeness.ingest(batch, wall_clock_us())  # duplicates dropped (and resets held) here
        if out.num_rows == 0:
            return Parsed(None, len(parsed.rejected))
        if out is batch:
            self.next_sequence += out.num_rows
        else:
            out = self.numbered(out)
        return Parsed(out, len(parsed.rejected))

    def numbered(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with platform_sequence numbered from the next free value (backfilled rows, or
        rows left after duplicates were dropped)."""
        index = batch.schema.get_field_index("platform_sequence")
        seq = pa.array(range(self.next_sequence, self.next_sequence + batch.num_rows), pa.int64())
        self.next_sequence += batch.num_rows
        return batch.set_column(index, batch.schema.field(index), seq)
