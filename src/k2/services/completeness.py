"""Completeness at ingest: sequence tracking, deduplication, quality checks, gap backfill, events.

Both streaming services (the embedded pipeline and `k2 ingest`, through
:class:`~k2.services.intake.TradeIntake`) hand every parsed trade batch to
:meth:`Completeness.ingest` (duplicates are dropped there, before the writer or the producer), call
:meth:`Completeness.tick` with the current time (due gaps are recorded OPEN and queued for backfill;
stale feeds are reported), and pass :meth:`Completeness.take_events` on right after the trades they
describe: the pipeline commits them to the quality-events table, `k2 ingest` produces them to the
venue's quality topic, from which `k2 consume` commits them to the same table.
:meth:`Completeness.run_backfill` fetches queued gaps over REST (rate-limited), passes the rows
through the same tracker (so they are deduplicated too) and hands them to the pipeline, then
records the gap RESOLVED or UNRECOVERABLE with the reason. See docs/quality.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThanOrEqual
from pyiceberg.table import Table
from pyiceberg.types import TimestamptzType

from k2.bus.tail import Tail
from k2.config import K2Settings
from k2.errors import K2Error
from k2.logging import get_logger
from k2.metrics import BACKFILL_GAPS, BACKFILL_TRADES, QUALITY_AFFECTED_TRADES, QUALITY_EVENTS
from k2.quality.checks import PriceJumpCheck, StaleFeedCheck, timestamp_anomalies
from k2.quality.records import QualityEventRow, anomaly_row, gap_row, sequence_row
from k2.quality.sequence import Gap, Seed, SequenceTracker, StreamKey, window_floor
from k2.schema.quality_event import EventKind, EventStatus
from k2.services.backfill import BinanceRestClient, TokenBucket
from k2.sources.base import Rejected, RejectReason
from k2.sources.binance_rest import parse_historical_trades
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)

STREAM = "trade"


@dataclass
class CompletenessStats:
    duplicates_dropped: int = 0
    out_of_order: int = 0
    resets: int = 0
    gaps_detected: int = 0
    gaps_resolved: int = 0
    gaps_unrecoverable: int = 0
    backfilled_rows: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "duplicates_dropped": self.duplicates_dropped,
            "out_of_order": self.out_of_order,
            "resets": self.resets,
            "gaps_detected": self.gaps_detected,
            "gaps_resolved": self.gaps_resolved,
            "gaps_unrecoverable": self.gaps_unrecoverable,
            "backfilled_rows": self.backfilled_rows,
            "anomalies": dict(self.anomalies),
        }


def _predicate(kind: Any, column: str, value: object) -> BooleanExpression:
    # pyiceberg predicates are built as (term, literal); the pydantic mypy plugin types them by field.
    return cast(BooleanExpression, kind(column, value))


def recent_ids(table: Table, exchange: str, lookback_us: int) -> dict[str, Seed]:
    """Per symbol, the trade ids (int64) and trade times (µs) of the table's rows within ``lookback_us`` of its newest.

    The newest timestamp comes from the data files' column metrics (no scan); the scan reads only
    ``symbol`` and ``source_sequence`` of the newest partitions. Ids are integers, so 99999 < 100000.
    """
    ts_field = table.schema().find_field("timestamp")
    newest: int | None = None
    for task in table.scan().plan_files():
        bound = (task.file.upper_bounds or {}).get(ts_field.field_id)
        if bound is not None:
            value = int(from_bytes(TimestamptzType(), bound))
            newest = value if newest is None else max(newest, value)
    if newest is None:
        return {}
    cutoff = datetime.fromtimestamp((newest - lookback_us) / 1e6, tz=UTC).isoformat()
    arrow = table.scan(
        row_filter=And(_predicate(GreaterThanOrEqual, "timestamp", cutoff), _predicate(EqualTo, "exchange", exchange)),
        selected_fields=("symbol", "source_sequence", "timestamp"),
    ).to_arrow()
    return ids_by_symbol(arrow)


def ids_by_symbol(rows: pa.Table) -> dict[str, Seed]:
    """Per symbol, the trade ids (int64) and trade times (µs) of ``rows`` (``symbol``, ``source_sequence``,
    ``timestamp`` columns): the tracker's seed, every hole between them trusted (the table holds
    every row of the time window it was read from)."""
    out: dict[str, Seed] = {}
    for symbol in pc.unique(rows["symbol"]).to_pylist():
        part = rows.filter(pc.equal(rows["symbol"], symbol))
        out[symbol] = Seed(part["source_sequence"].to_numpy(), part["timestamp"].cast(pa.int64()).to_numpy())
    return out


def topic_seed(tail: Tail) -> dict[str, Seed]:
    """Per symbol, the seed from a topic's newest messages (`k2 ingest`).

    Unlike the table's time window, a window of the newest *messages* can start with rows written
    late (backfilled trades have low ids), so its holes below the stream's position at the window's
    start prove nothing: :func:`~k2.quality.sequence.window_floor` finds that position from the
    log order of the symbol's live rows, and only holes above it are trusted. A partition read from
    offset 0 holds everything ever written to it: all its holes are trusted.
    """
    rows = tail.rows
    if rows.num_rows == 0:
        return {}
    ids = rows["source_sequence"].to_numpy()
    times = rows["timestamp"].cast(pa.int64()).to_numpy()
    backfilled = pc.map_lookup(rows["vendor_data"], pa.scalar("backfilled"), "first")
    live = ~pc.fill_null(pc.equal(backfilled, "true"), False).to_numpy(zero_copy_only=False)
    out: dict[str, Seed] = {}
    for symbol in pc.unique(rows["symbol"]).to_pylist():
        idx = np.flatnonzero(pc.equal(rows["symbol"], symbol).to_numpy(zero_copy_only=False))
        partitions = {int(p) for p in tail.partitions[idx]}
        floor: int | None = None
        if not partitions <= tail.whole:
            floor = int(ids[idx].max())  # nothing to trust, unless the log order says more
            if len(partitions) == 1:  # keyed by symbol: one partition, so offsets order its rows
                order = idx[np.argsort(tail.offsets[idx], kind="stable")]
                found = window_floor(ids[order].tolist(), live[order].tolist())
                floor = floor if found is None else found
        out[symbol] = Seed(ids[idx], times[idx], floor)
    return out


class Completeness:
    """Sequence tracking, dedup, checks and backfill for one venue's trade streams."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        exchange: str,
        venue: str,
        is_sample_data: bool,
        now_us: int,
        seed: Mapping[str, Seed],
        symbol_info: Mapping[str, SymbolInfo] | None = None,
    ) -> None:
        """``seed``: per symbol, the trade ids (and their trade times, µs) already stored: from the
        table (:func:`recent_ids`, embedded mode) or from the topic's newest messages
        (:func:`topic_seed`, `k2 ingest`)."""
        q = settings.quality
        self.settings = settings
        self.exchange = exchange
        self.venue = venue
        self.is_sample_data = is_sample_data
        self.symbol_info = dict(symbol_info or {})
        self.stats = CompletenessStats()
        self.tracker = SequenceTracker(grace_us=int(q.gap_grace_s * 1e6), reset_threshold=q.reset_threshold)
        self._price = PriceJumpCheck(Decimal(str(q.price_jump_fraction)), q.price_window)
        self._stale = StaleFeedCheck(int(q.stale_after_s * 1e6))
        self._events: list[QualityEventRow] = []
        self._queue: asyncio.Queue[Gap] = asyncio.Queue()
        self.backfilling = 0  # gaps queued or in progress
        for symbol, known in seed.items():
            key = StreamKey(exchange, symbol, STREAM)
            self.tracker.seed(key, known.ids, now_us, known.trade_times_us, holes_above=known.holes_above)
            log.info("quality.seeded", symbol=symbol, high=self.tracker.high(key), holes=len(self.tracker.holes(key)))

    def resolve_stored(self, gaps: list[Gap], seed: Mapping[str, Seed], now_us: int) -> None:
        """Gaps recorded OPEN earlier (:func:`~k2.quality.records.open_gaps`) whose every id is in
        ``seed`` (what is stored): their trades were written, but the process stopped before their
        RESOLVED row was. Record it now. Gaps still missing ids are found again from the seed's holes
        (same event id) and backfilled."""
        for gap in gaps:
            known = seed.get(gap.key.symbol)
            if gap.key.exchange != self.exchange or known is None:
                continue
            wanted = np.arange(gap.first_id, gap.last_id + 1, dtype=np.int64)
            if bool(np.isin(wanted, known.ids).all()):
                self._record(gap_row(gap, EventStatus.RESOLVED, now_us, 0, "found complete on start"))

    # --- live batches -----------------------------------------------------------------------------
    def ingest(self, batch: pa.RecordBatch, now_us: int) -> pa.RecordBatch:
        """Track ``batch`` per symbol, record events, run the checks; returns it without duplicates."""
        symbols = batch.column("symbol")
        ids_all = batch.column("source_sequence").to_numpy()
        times_all = batch.column("timestamp").cast(pa.int64()).to_numpy()
        keep = np.ones(batch.num_rows, dtype=bool)
        for symbol in pc.unique(symbols).to_pylist():
            idx = np.flatnonzero(pc.equal(symbols, symbol).to_numpy(zero_copy_only=False))
            key = StreamKey(self.exchange, symbol, STREAM)
            obs = self.tracker.observe(key, ids_all[idx], times_all[idx], now_us)
            keep[idx] = obs.keep
            for event in obs.events:
                self._record(sequence_row(event))
        dropped = int(batch.num_rows - np.count_nonzero(keep))
        if dropped:
            batch = batch.filter(pa.array(keep))
        self._check(batch, now_us)
        return batch

    def _check(self, batch: pa.RecordBatch, now_us: int) -> None:
        if batch.num_rows == 0:
            return
        q = self.settings.quality
        symbols = batch.column("symbol")
        received = batch.column("ingestion_timestamp").cast(pa.int64()).to_numpy()
        for symbol in pc.unique(symbols).to_pylist():
            mask = pc.equal(symbols, symbol)
            part = batch.filter(mask)
            ids = part.column("source_sequence").to_numpy()
            times = part.column("timestamp").cast(pa.int64()).to_numpy()
            recv = received[np.flatnonzero(mask.to_numpy(zero_copy_only=False))]
            self._stale.seen(symbol, int(recv.max()))
            anomalies = self._price.check(symbol, ids.tolist(), part.column("price"), times.tolist())
            if not self.is_sample_data:  # replayed data is old by design: its lag means nothing
                anomalies += timestamp_anomalies(
                    symbol, ids, times, recv, max_future_us=int(q.max_future_s * 1e6), max_lag_us=int(q.max_lag_s * 1e6)
                )
            for anomaly in anomalies:
                self._record(anomaly_row(anomaly, self.exchange, now_us))

    def rejected(self, rejects: Sequence[Rejected]) -> None:
        """Count the parser's non-positive price/quantity rejects as quality anomalies (no row: no id)."""
        n = sum(1 for r in rejects if r.reason is RejectReason.NON_POSITIVE)
        if n:
            QUALITY_EVENTS.labels(venue=self.venue, kind=EventKind.NON_POSITIVE.value).inc(n)
            QUALITY_AFFECTED_TRADES.labels(venue=self.venue, kind=EventKind.NON_POSITIVE.value).inc(n)
            self.stats.anomalies[EventKind.NON_POSITIVE] = self.stats.anomalies.get(EventKind.NON_POSITIVE, 0) + n

    def _record(self, row: QualityEventRow) -> None:
        self._events.append(row)
        kind = row.kind
        if row.status in (EventStatus.RECORDED, EventStatus.OPEN):
            QUALITY_EVENTS.labels(venue=self.venue, kind=kind.value).inc()
            QUALITY_AFFECTED_TRADES.labels(venue=self.venue, kind=kind.value).inc(row.count)
        if kind is EventKind.DUPLICATE:
            self.stats.duplicates_dropped += row.count
        elif kind is EventKind.OUT_OF_ORDER:
            self.stats.out_of_order += row.count
        elif kind is EventKind.RESET:
            self.stats.resets += 1
        elif kind is EventKind.GAP:
            if row.status is EventStatus.OPEN:
                self.stats.gaps_detected += 1
            elif row.status is EventStatus.RESOLVED:
                self.stats.gaps_resolved += 1
            else:
                self.stats.gaps_unrecoverable += 1
        else:
            self.stats.anomalies[kind] = self.stats.anomalies.get(kind, 0) + row.count
        level = log.debug if kind in (EventKind.DUPLICATE, EventKind.OUT_OF_ORDER) else log.info
        level(
            "quality.event", kind=kind.value, status=row.status.value, symbol=row.symbol,
            first_id=row.first_id, last_id=row.last_id, count=row.count, detail=row.detail,
        )  # fmt: skip

    # --- time-driven ----------------------------------------------------------------------------
    def tick(self, now_us: int) -> None:
        """Confirm gaps past their grace period (record OPEN, queue backfill); report stale feeds."""
        for gap in self.tracker.due_gaps(now_us):
            self._record(gap_row(gap, EventStatus.OPEN, now_us))
            if self.settings.quality.backfill:
                self.backfilling += 1
                self._queue.put_nowait(gap)
        for symbol, silence_us in self._stale.check(now_us):
            row = QualityEventRow(
                f"stale:{self.exchange}:{symbol}:{now_us}", self.exchange, symbol, STREAM, EventKind.STALE_FEED,
                0, 0, 1, now_us - silence_us, now_us, EventStatus.RECORDED, now_us, 0,
                f"no message for {silence_us / 1e6:.1f} s",
            )  # fmt: skip
            self._record(row)

    def reopen(self, symbol: str, ids: np.ndarray, trade_times_us: np.ndarray, now_us: int) -> int:
        """Trades accepted here whose delivery failed and that storage does not hold (`k2 ingest`
        checks its topic first): re-opened as gaps, recorded OPEN and queued for backfill like any
        confirmed gap (:meth:`SequenceTracker.reopen`). Returns the number of ids re-opened."""
        key = StreamKey(self.exchange, symbol, STREAM)
        gaps = self.tracker.reopen(key, ids, trade_times_us, now_us)
        for gap in gaps:
            self._record(gap_row(gap, EventStatus.OPEN, now_us, 0, "delivery to Kafka failed"))
            if self.settings.quality.backfill:
                self.backfilling += 1
                self._queue.put_nowait(gap)
        return sum(gap.count for gap in gaps)

    @property
    def has_events(self) -> bool:
        """Events waiting to be committed."""
        return bool(self._events)

    def take_events(self) -> list[QualityEventRow]:
        events, self._events = self._events, []
        return events

    def restore_events(self, events: list[QualityEventRow]) -> None:
        self._events = [*events, *self._events]

    # --- backfill ---------------------------------------------------------------------------------
    async def run_backfill(self, deliver: Callable[[pa.RecordBatch], None]) -> None:
        """Fetch queued gaps one after another until cancelled; rows go to ``deliver``."""
        q = self.settings.quality
        limiter = TokenBucket(q.rest_weight_per_minute / 60.0, q.rest_weight_burst)
        async with BinanceRestClient(
            self.settings.source.rest_url, limiter, attempts=q.backfill_attempts, timeout_s=q.rest_timeout_s,
            venue=self.venue,
        ) as client:  # fmt: skip
            while True:
                gap = await self._queue.get()
                try:
                    await self._backfill(client, gap, deliver)
                except Exception as exc:  # a bug must not stop backfill: record it on the gap
                    log.error("backfill.failed", symbol=gap.key.symbol, first_id=gap.first_id, error=repr(exc))
                    self.tracker.abandon(gap)
                    row = gap_row(gap, EventStatus.UNRECOVERABLE, client.clock_us(), 0, f"backfill failed: {exc!r}")
                    self._record(row)
                finally:
                    self.backfilling -= 1

    async def _backfill(self, client: BinanceRestClient, gap: Gap, deliver: Callable[[pa.RecordBatch], None]) -> None:
        q = self.settings.quality
        symbol = gap.key.symbol
        fetched = written = 0
        problem = ""
        if gap.count > q.max_backfill_trades:
            problem = f"gap of {gap.count} trades exceeds quality.max_backfill_trades={q.max_backfill_trades}"
        from_id = gap.first_id
        while not problem and from_id <= gap.last_id:
            try:
                page = await client.historical_trades(
                    symbol, from_id, min(q.backfill_page_limit, gap.last_id - from_id + 1)
                )
                parsed = parse_historical_trades(
                    page.body, symbol, received_at_us=page.received_at_us, first_platform_sequence=0,
                    is_sample_data=self.is_sample_data, symbol_info=self.symbol_info,
                )  # fmt: skip
            except K2Error as exc:
                problem = str(exc)
                break
            if parsed.batch is None or not parsed.ids:
                break
            ids = np.asarray(parsed.ids, dtype=np.int64)
            in_range = ids <= gap.last_id
            keep = self.tracker.accept_backfill(gap.key, ids[in_range])
            fetched += int(np.count_nonzero(in_range))
            if keep.any():
                deliver(parsed.batch.filter(pa.array(in_range)).filter(pa.array(keep)))
                written += int(np.count_nonzero(keep))
            next_id = int(ids.max()) + 1
            if next_id <= from_id:
                break
            from_id = next_id
        self.stats.backfilled_rows += written
        BACKFILL_TRADES.labels(venue=self.venue).inc(written)
        missing = self.tracker.missing_in(gap)
        now_us = client.clock_us()
        if missing == 0:
            BACKFILL_GAPS.labels(venue=self.venue, outcome="resolved").inc()
            self._record(gap_row(gap, EventStatus.RESOLVED, now_us, written, f"fetched {fetched} trades over REST"))
        else:
            self.tracker.abandon(gap)
            detail = problem or f"the venue returned {fetched} of {gap.count} trades"
            BACKFILL_GAPS.labels(venue=self.venue, outcome="unrecoverable").inc()
            self._record(gap_row(gap, EventStatus.UNRECOVERABLE, now_us, written, f"{missing} still missing: {detail}"))
