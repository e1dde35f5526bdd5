"""The embedded pipeline: WebSocket sessions -> venue parser -> quarantine / buffered Iceberg writer.

No broker: frames go from the socket into an in-memory backlog, are parsed in batches (columnar),
and canonical batches are committed to Iceberg by one writer thread, flushed by row count or age.
Backpressure: when the backlog reaches ``max_backlog_rows`` the frame sink stops returning, which
stops reading the socket; nothing is dropped. At most one commit is in flight, so commits land in
platform-sequence order; the last assigned ``platform_sequence`` and the sequence tracker's state
(:mod:`k2.quality.state`) are stored in each commit's snapshot summary and recovered on start, so
a restart, even after ``kill -9``, knows exactly which trade ids the table holds.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.config import K2Settings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.quality_events import gap_events
from k2.lake.quarantine import Quarantine
from k2.lake.sequence_state import recover_state, stored_ids
from k2.lake.writer import TableWriter
from k2.logging import get_logger
from k2.metrics import LAKE_COMMIT_FAILURES, LAST_EVENT_TIME
from k2.quality.records import QualityEventRow, events_batch, open_gaps
from k2.schema.kinds import RecordKind
from k2.schema.quality_event import EventStatus
from k2.services.completeness import Completeness
from k2.services.intake import TradeIntake
from k2.services.lifecycle import FrameBacklog, open_sessions, supervise
from k2.sources import load_adapter
from k2.sources.session import wall_clock_us
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)

PLATFORM_SEQUENCE_PROPERTY = "k2.platform-sequence"


@dataclass
class PipelineStats:
    frames: int = 0
    trades: int = 0
    rejected: int = 0
    rows_committed: int = 0
    commits: int = 0
    commit_failures: int = 0
    last_commit_at: datetime | None = None
    started_at: float = field(default_factory=time.monotonic)
    trades_by_symbol: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started_at
        return {
            "frames": self.frames,
            "trades": self.trades,
            "rejected": self.rejected,
            "rows_committed": self.rows_committed,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "last_commit_at": self.last_commit_at.isoformat() if self.last_commit_at else None,
            "elapsed_s": round(elapsed, 3),
            "trades_by_symbol": dict(self.trades_by_symbol),
        }


class EmbeddedPipeline:
    """Streams one venue's trades into the local Iceberg warehouse."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        ws_base_url: str | None = None,
        is_sample_data: bool = False,
        symbol_info: Mapping[str, SymbolInfo] | None = None,
        parse_batch_frames: int = 5_000,
        parse_interval_s: float = 0.05,
    ) -> None:
        self.settings = settings
        self.is_sample_data = is_sample_data
        self.adapter = load_adapter(
            settings.source.venue, settings.source.symbols, symbol_info=symbol_info,
            validation=settings.source.validation,
        )  # fmt: skip
        self.urls, self._sessions = open_sessions(self.adapter, settings, ws_base_url)
        lake = settings.lake
        self.catalog = open_catalog(lake)
        table = load_or_create_table(self.catalog, lake, RecordKind.TRADES)
        self.writer = TableWriter(self.catalog, (lake.namespace, lake.trades_table), lake)
        LAKE_COMMIT_FAILURES.labels(table=f"{lake.namespace}.{lake.trades_table}")  # exported as 0 from the start
        self.quarantine = Quarantine(lake.quarantine_dir, self.adapter.venue)
        self.stats = PipelineStats()
        self._symbols = set(settings.source.symbols)
        self._parse_interval_s = parse_interval_s
        self._backlog = FrameBacklog(
            parse_batch_frames, 4 * lake.flush_rows + parse_batch_frames, lambda: self._buffer_rows
        )
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_rows = 0
        self._buffer_since = time.monotonic()
        self._stopping = asyncio.Event()
        self._inflight: asyncio.Task[None] | None = None
        # Sequence tracking, dedup, quality checks and gap backfill (docs/quality.md), from the state
        # recorded with the newest commit; a table written without one is seeded from its stored ids.
        exchange = self.adapter.exchange
        recovered = recover_state(table, exchange)
        seed = None if recovered.states is not None else stored_ids(table, exchange, settings.quality.seed_ids)
        log.info("pipeline.sequence_state", source=recovered.reason, snapshot_id=recovered.snapshot_id)
        self.completeness = Completeness(
            settings, exchange=exchange, venue=self.adapter.venue, is_sample_data=is_sample_data,
            now_us=wall_clock_us(), seed=seed, state=recovered.states, symbol_info=symbol_info,
        )  # fmt: skip
        events = load_or_create_table(self.catalog, settings.lake, RecordKind.QUALITY_EVENTS)
        self.completeness.resolve_stored(open_gaps(gap_events(events)), seed, wall_clock_us())
        self.events_writer = TableWriter(self.catalog, (lake.namespace, lake.events_table), lake)
        self.intake = TradeIntake(
            self.adapter, self.quarantine, self.completeness,
            next_sequence=_recover_platform_sequence(table.snapshots()) + 1, is_sample_data=is_sample_data,
        )  # fmt: skip

    # --- public ---------------------------------------------------------------------------------
    @property
    def next_platform_sequence(self) -> int:
        """The platform_sequence the next parsed record gets (recovered from the table on start)."""
        return self.intake.next_sequence

    def get_stats(self) -> dict[str, Any]:
        out = self.stats.as_dict()
        out["backlog_frames"] = len(self._backlog)
        out["buffered_rows"] = self._buffer_rows
        out["sessions"] = [s.get_stats() for s in self._sessions]
        out["writer"] = self.writer.get_stats()
        out["quarantine"] = dict(self.quarantine.counts)
        out["quality"] = self.completeness.stats.as_dict()
        return out

    def stop(self) -> None:
        """Ask the pipeline to finish: stop reading, then parse and commit everything received."""
        self._stopping.set()
        self._backlog.wake()
        for session in self._sessions:
            session.stop()

    async def run(self) -> PipelineStats:
        """Run until :meth:`stop` (or a session fails fatally); returns the final stats."""
        log.info(
            "pipeline.start",
            venue=self.adapter.venue,
            urls=self.urls,
            warehouse=str(self.settings.lake.warehouse),
        )
        backfill = None
        if self.settings.quality.backfill:
            backfill = functools.partial(self.completeness.run_backfill, self._add_backfilled)
        await supervise(self._sessions, self._backlog.sink, self._process_loop, self.stop, backfill)
        log.info("pipeline.stopped", **self.stats.as_dict())
        return self.stats

    # --- internals ------------------------------------------------------------------------------
    async def _process_loop(self) -> None:
        while True:
            await self._backlog.wait(self._parse_interval_s)
            self._parse_pending()
            self.completeness.tick(wall_clock_us())
            await self._maybe_flush(force=self._stopping.is_set())
            self._backlog.release()
            idle = not len(self._backlog) and self._buffer_rows == 0 and not self.completeness.has_events
            if self._stopping.is_set() and idle and self._inflight is None:
                return

    def _parse_pending(self) -> None:
        frames = self._backlog.take()
        if not frames:
            return
        self.stats.frames += len(frames)
        parsed = self.intake.parse(frames)
        self.stats.rejected += parsed.rejected
        batch = parsed.trades
        if batch is None:
            return
        self.stats.trades += batch.num_rows
        self._observe_symbols(batch)
        self._buffer_batch(batch)

    def _buffer_batch(self, batch: pa.RecordBatch) -> None:
        if self._buffer_rows == 0:
            self._buffer_since = time.monotonic()
        self._buffer.append(batch)
        self._buffer_rows += batch.num_rows

    def _add_backfilled(self, batch: pa.RecordBatch) -> None:
        """Rows fetched by backfill (already deduplicated by the tracker) join the write buffer."""
        self._buffer_batch(self.intake.numbered(batch))

    def _observe_symbols(self, batch: pa.RecordBatch) -> None:
        """Per-symbol counts and the freshest trade time (a gauge). Times stay integer microseconds:
        no Python datetime, whose year 9999 limit a venue time must never be able to reach."""
        times = batch.column("timestamp").cast(pa.int64())
        grouped = (
            pa.table({"symbol": batch.column("symbol"), "t": times})
            .group_by("symbol")
            .aggregate([("t", "max"), ("symbol", "count")])
        )
        for symbol, newest_us, count in zip(
            grouped["symbol"].to_pylist(),
            grouped["t_max"].to_pylist(),
            grouped["symbol_count"].to_pylist(),
            strict=True,
        ):
            self.stats.trades_by_symbol[symbol] = self.stats.trades_by_symbol.get(symbol, 0) + count
            if symbol in self._symbols:
                LAST_EVENT_TIME.labels(venue=self.adapter.venue, symbol=symbol).set(newest_us / 1e6)

    async def _maybe_flush(self, *, force: bool) -> None:
        if self._inflight is not None:
            if not self._inflight.done():
                if not force:
                    return
                await asyncio.wait([self._inflight])
            self._inflight = None
        if self._buffer_rows == 0 and not self.completeness.has_events:
            return
        due = (
            force
            or self._buffer_rows >= self.settings.lake.flush_rows
            or time.monotonic() - self._buffer_since >= self.settings.lake.flush_seconds
        )
        if not due:
            return
        batches, rows = self._buffer, self._buffer_rows
        self._buffer, self._buffer_rows = [], 0
        # The tracker now describes exactly the committed rows plus these: it goes into their commit.
        state = self.completeness.recorded_state()
        self._inflight = asyncio.create_task(self._commit(batches, rows, state, self.completeness.take_events()))
        if force:
            await asyncio.wait([self._inflight])

    async def _commit(
        self,
        batches: Sequence[pa.RecordBatch],
        rows: int,
        state: Mapping[str, str],
        events: list[QualityEventRow] | None = None,
    ) -> None:
        events = events or []
        if batches:
            # A gap's OPEN row goes *before* the trades: they may hold rows backfilled for it, and a
            # crash between the two commits must not leave those rows without the gap's record (a
            # restart settles an OPEN gap whose rows are stored: resolve_stored).
            opened = [e for e in events if e.status is EventStatus.OPEN]
            if opened and await self._commit_events(opened):
                events = [e for e in events if e.status is not EventStatus.OPEN]
            if not await self._commit_trades(batches, rows, state):
                self.completeness.restore_events(events)
                return
        if events:  # after the trades they describe: a RESOLVED gap's rows are committed first
            await self._commit_events(events, restore=True)

    async def _commit_events(self, events: list[QualityEventRow], *, restore: bool = False) -> bool:
        try:
            await asyncio.to_thread(self.events_writer.append, events_batch(events))
            return True
        except Exception as exc:
            log.error("pipeline.events_commit_failed", events=len(events), error=str(exc))
            if restore:
                self.completeness.restore_events(events)
            return False

    async def _commit_trades(self, batches: Sequence[pa.RecordBatch], rows: int, state: Mapping[str, str]) -> bool:
        last_seq = int(pc.max(pa.chunked_array([b.column("platform_sequence") for b in batches])).as_py())
        props = {PLATFORM_SEQUENCE_PROPERTY: str(last_seq), **state}
        try:
            result = await asyncio.to_thread(self.writer.append, batches, props)
        except Exception as exc:
            # Keep the rows: put them back in front of the buffer and let the next flush retry.
            self.stats.commit_failures += 1
            lake = self.settings.lake
            LAKE_COMMIT_FAILURES.labels(table=f"{lake.namespace}.{lake.trades_table}").inc()
            log.error("pipeline.commit_failed", rows=rows, error=str(exc), error_type=type(exc).__name__)
            self._buffer = [*batches, *self._buffer]
            self._buffer_rows += rows
            await asyncio.sleep(min(5.0, 0.5 * self.stats.commit_failures))
            return False
        self.stats.rows_committed += result.rows
        self.stats.commits += 1
        self.stats.last_commit_at = datetime.now(tz=UTC)
        return True


def _recover_platform_sequence(snapshots: Sequence[Any]) -> int:
    """The last platform_sequence committed (newest snapshot that recorded one), or 0."""
    for snapshot in sorted(snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        summary = snapshot.summary
        value = summary.additional_properties.get(PLATFORM_SEQUENCE_PROPERTY) if summary else None
        if value is not None:
            return int(value)
    return 0
