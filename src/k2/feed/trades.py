"""Trade completeness at ingest (id policy ``consecutive``): sequence tracking, deduplication, quality
checks, gap backfill, events.

A feed (:class:`k2.feed.feed.VenueFeed`) hands every parsed trade batch (wire form) to
:meth:`TradeCompleteness.ingest` (duplicates are dropped there, before any sink), calls
:meth:`TradeCompleteness.tick` with the current time (due gaps are recorded OPEN and queued for
backfill; stale feeds are reported), and passes :meth:`TradeCompleteness.take_events` to its sink
right after the trades they describe: the Iceberg sink commits them to the quality-events table,
the Kafka sink produces them to the venue's quality topic, from which `k2 consume` commits them to
the same table. :meth:`TradeCompleteness.run_backfill` fetches queued gaps with the venue's REST
fetcher (:class:`k2.sources.venue.TradeFetcher`: rate-limited, transient faults retried), passes the
rows through the same tracker (so they are deduplicated too) and hands them to the feed, then
records the gap RESOLVED or UNRECOVERABLE with the reason; an unrecoverable gap is tried again on a
slow schedule. Rows the tracker holds as a possible venue reset wait here until it is confirmed or
dropped. The embedded sink commits :meth:`TradeCompleteness.recorded_state` with each commit; on
start the state comes back from there (or from a seed). See docs/quality.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.bus.tail import Tail
from k2.config import K2Settings
from k2.errors import K2Error
from k2.logging import get_logger
from k2.metrics import BACKFILL_GAPS, BACKFILL_TRADES, QUALITY_AFFECTED_TRADES, QUALITY_EVENTS
from k2.quality.checks import PriceJumpCheck, StaleFeedCheck, timestamp_anomalies
from k2.quality.records import QualityEventRow, anomaly_row, gap_row, sequence_row
from k2.quality.sequence import Gap, Seed, SequenceTracker, StreamKey, StreamState, window_floor
from k2.quality.state import encode_state, state_property
from k2.schema.quality_event import EventKind, EventStatus
from k2.sources.base import Rejected, RejectReason
from k2.sources.venue import FetchedTrades, TradeFetcher
from k2.stats import Counters

log = get_logger(__name__)


@dataclass
class CompletenessStats(Counters):
    duplicates_dropped: int = 0
    out_of_order: int = 0
    resets: int = 0
    gaps_detected: int = 0
    gaps_resolved: int = 0
    gaps_unrecoverable: int = 0
    backfilled_rows: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)


def count_anomalies(venue: str, kind: EventKind, n: int, into: dict[str, int]) -> None:
    """Count ``n`` rejected rows as quality anomalies of ``kind`` (rejects have no id to record)."""
    QUALITY_EVENTS.labels(venue=venue, kind=kind.value).inc(n)
    QUALITY_AFFECTED_TRADES.labels(venue=venue, kind=kind.value).inc(n)
    into[kind] = into.get(kind, 0) + n


def _live_mask(rows: pa.Table) -> np.ndarray:
    backfilled = pc.map_lookup(rows["vendor_data"], pa.scalar("backfilled"), "first")
    return np.asarray(~pc.fill_null(pc.equal(backfilled, "true"), False).to_numpy(zero_copy_only=False))


def _floor(tail: Tail, ids: np.ndarray, live: np.ndarray, idx: np.ndarray) -> tuple[int | None, bool]:
    """For one symbol's rows ``idx`` of ``tail``: the id at or below which its holes prove nothing
    (None: every hole is trusted), and whether its position is known (the seed is exact)."""
    partitions = {int(p) for p in tail.partitions[idx]}
    if partitions <= tail.whole:
        return None, True
    if len(partitions) == 1:  # keyed by symbol: one partition, so offsets order its rows
        order = idx[np.argsort(tail.offsets[idx], kind="stable")]
        found = window_floor(ids[order].tolist(), live[order].tolist())
        if found is not None:
            return found, True
    return int(ids[idx].max()), False  # nothing to trust: the log order does not say more


def topic_seed(tail: Tail) -> dict[str, Seed]:
    """Per symbol, the seed from a topic's newest messages (`k2 ingest`).

    A window of the newest *messages* can start with rows written late (backfilled trades have low
    ids), so its holes below the stream's position at the window's start prove nothing:
    :func:`~k2.quality.sequence.window_floor` finds that position from the log order of the
    symbol's live rows, and only holes above it are trusted. A partition read from offset 0 holds
    everything ever written to it: all its holes are trusted.
    """
    rows = tail.rows
    if rows.num_rows == 0:
        return {}
    ids = rows["source_sequence"].to_numpy()
    times = rows["timestamp"].cast(pa.int64()).to_numpy()
    live = _live_mask(rows)
    out: dict[str, Seed] = {}
    for symbol in pc.unique(rows["symbol"]).to_pylist():
        idx = np.flatnonzero(pc.equal(rows["symbol"], symbol).to_numpy(zero_copy_only=False))
        out[symbol] = Seed(ids[idx], times[idx], _floor(tail, ids, live, idx)[0])
    return out


def unplaced(tail: Tail, symbols: Sequence[str]) -> set[int]:
    """The partitions to read further back before ``tail`` fixes the position of every one of
    ``symbols`` (empty: it does). A symbol is placed when a live row of it is a new high after its
    first one in the tail (:func:`window_floor`), or when every partition holding it was read from
    offset 0; a symbol not in the tail at all could be in any partition not read from offset 0.
    `k2 ingest` reads back until this is empty (:func:`k2.bus.tail.read_tail`)."""
    rows = tail.rows
    present = set(pc.unique(rows["symbol"]).to_pylist()) if rows.num_rows else set()
    out: set[int] = set()
    if any(s not in present for s in symbols):
        out |= tail.topic_partitions - tail.whole
    if present & set(symbols):
        ids = rows["source_sequence"].to_numpy()
        live = _live_mask(rows)
        for symbol in present & set(symbols):
            idx = np.flatnonzero(pc.equal(rows["symbol"], symbol).to_numpy(zero_copy_only=False))
            if not _floor(tail, ids, live, idx)[1]:
                out |= {int(p) for p in tail.partitions[idx]} - tail.whole
    return out


class TradeCompleteness:
    """Sequence tracking, dedup, checks and backfill for one venue's trade streams."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        exchange: str,
        venue: str,
        is_sample_data: bool,
        now_us: int,
        stream: str = "trade",
        seed: Mapping[str, Seed] | None = None,
        state: Mapping[StreamKey, StreamState] | None = None,
        fetcher: Callable[[], TradeFetcher] | None = None,
        quarantine: Callable[[Sequence[Rejected]], None] | None = None,
    ) -> None:
        """Start from ``state`` (recorded with the committed rows: :func:`k2.lake.sequence_state.recover_state`,
        embedded mode) or from ``seed``: per symbol, the trade ids (and their trade times, µs)
        already stored (:func:`k2.lake.sequence_state.stored_ids` for a table without a recorded
        state; :func:`topic_seed` for `k2 ingest`). ``stream``: the venue's name of its trade stream
        (quality events' ``stream``). ``fetcher``: builds the venue's REST trade fetcher when backfill
        starts; ``quarantine``: where the REST pages' rejected elements go."""
        q = settings.quality
        self.settings = settings
        self.exchange = exchange
        self.venue = venue
        self.stream = stream
        self.is_sample_data = is_sample_data
        self._fetcher = fetcher
        self._quarantine = quarantine
        self.stats = CompletenessStats()
        self.tracker = SequenceTracker(
            grace_us=int(q.gap_grace_s * 1e6), reset_threshold=q.reset_threshold, reset_confirm=q.reset_confirm_trades
        )
        self._price = PriceJumpCheck(Decimal(str(q.price_jump_fraction)), q.price_window)
        self._stale = StaleFeedCheck(int(q.stale_after_s * 1e6))
        self._events: list[QualityEventRow] = []
        self._held: dict[StreamKey, list[pa.RecordBatch]] = {}  # rows of a possible reset, not yet written
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._retries: list[_Job] = []  # unrecoverable gaps waiting for their next slow retry
        self.backfilling = 0  # gaps queued or in progress
        for key, saved in (state or {}).items():
            self.tracker.restore(key, saved, now_us)
        for symbol, known in (seed or {}).items():
            key = StreamKey(exchange, symbol, stream)
            self.tracker.seed(key, known.ids, now_us, known.trade_times_us, holes_above=known.holes_above)
        for key in self.tracker.streams():
            log.info(
                "quality.seeded", symbol=key.symbol, high=self.tracker.high(key), holes=len(self.tracker.holes(key))
            )

    def resolve_stored(self, gaps: list[Gap], seed: Mapping[str, Seed] | None, now_us: int) -> None:
        """Gaps recorded OPEN earlier (:func:`~k2.quality.records.open_gaps`) whose every id is
        stored: their trades were written, but the process stopped before their RESOLVED row was.
        Record it now. "Stored" is: in ``seed`` when given, else held by the tracker's restored
        state. Gaps still missing ids are found again as holes (same event id) and backfilled; so is a
        gap whose ids reach above what is stored (:meth:`SequenceTracker.adopt`)."""
        for gap in sorted(gaps, key=lambda g: (g.key.symbol, g.first_id)):
            if gap.key.exchange != self.exchange:
                continue
            if self.tracker.adopt(gap, now_us):
                continue  # its ids reach above what is stored: a hole again, same event id
            if seed is None:
                complete = self.tracker.missing(gap.key, gap.first_id, gap.last_id) == 0
            else:
                known = seed.get(gap.key.symbol)
                wanted = np.arange(gap.first_id, gap.last_id + 1, dtype=np.int64)
                complete = known is not None and bool(np.isin(wanted, known.ids).all())
            if complete:
                self._record(gap_row(gap, EventStatus.RESOLVED, now_us, 0, "found complete on start"))

    def recorded_state(self) -> dict[str, str]:
        """The tracker's state as snapshot-summary properties (:mod:`k2.quality.state`). Taken when a
        flush takes the write buffer, it describes exactly the rows committed with it: every row the
        tracker accepted is in that commit or an earlier one (backfill delivers into the buffer in
        the same step as the tracker accepts its rows)."""
        text = encode_state(self.tracker.export(), max_holes=self.settings.quality.state_max_holes)
        return {state_property(self.exchange): text}

    # --- live batches -----------------------------------------------------------------------------
    def ingest(self, batch: pa.RecordBatch, now_us: int) -> pa.RecordBatch:
        """Track ``batch`` per symbol, record events, run the checks; returns the rows to write: without
        duplicates and held rows, with rows held earlier that a confirmed reset releases. Returns
        ``batch`` itself when it is written as it is."""
        symbols = batch.column("symbol")
        ids_all = batch.column("source_sequence").to_numpy()
        times_all = batch.column("timestamp").cast(pa.int64()).to_numpy()
        keep = np.ones(batch.num_rows, dtype=bool)
        released: list[pa.RecordBatch] = []
        for symbol in pc.unique(symbols).to_pylist():
            idx = np.flatnonzero(pc.equal(symbols, symbol).to_numpy(zero_copy_only=False))
            key = StreamKey(self.exchange, symbol, self.stream)
            obs = self.tracker.observe(key, ids_all[idx], times_all[idx], now_us)
            keep[idx] = obs.keep
            for event in obs.events:
                self._record(sequence_row(event))
            if obs.released_held:
                released.extend(self._held.pop(key, []))
            elif obs.dropped_held:
                self._held.pop(key, None)
            if obs.held.any():
                self._held.setdefault(key, []).append(batch.take(pa.array(idx[obs.held])))
        out = batch if keep.all() else batch.filter(pa.array(keep))
        if released:
            out = pa.Table.from_batches([*released, out]).combine_chunks().to_batches()[0]
        self._check(out, now_us)
        return out

    def _check(self, batch: pa.RecordBatch, now_us: int) -> None:
        if batch.num_rows == 0:
            return
        q = self.settings.quality
        symbols = batch.column("symbol")
        received = batch.column("ingestion_timestamp").cast(pa.int64()).to_numpy()
        needed = batch.select(["source_sequence", "timestamp", "price"])  # not every column: filtered per symbol
        for symbol in pc.unique(symbols).to_pylist():
            mask = pc.equal(symbols, symbol)
            part = needed.filter(mask)
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
            count_anomalies(self.venue, EventKind.NON_POSITIVE, n, self.stats.anomalies)

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
        """Confirm gaps past their grace period (record OPEN, queue backfill); queue the unrecoverable
        gaps whose slow retry is due; report stale feeds."""
        for gap in self.tracker.due_gaps(now_us):
            self._record(gap_row(gap, EventStatus.OPEN, now_us))
            if self.settings.quality.backfill:
                self._enqueue(_Job(gap))
        if self._retries and min(j.due_us for j in self._retries) <= now_us:
            due = [j for j in self._retries if j.due_us <= now_us]
            self._retries = [j for j in self._retries if j.due_us > now_us]
            for job in due:
                if self.tracker.resume(job.gap) == 0:  # late arrivals filled it meanwhile
                    self._record(gap_row(job.gap, EventStatus.RESOLVED, now_us, 0, "no id missing any more"))
                else:
                    self._enqueue(job)
        for symbol, silence_us in self._stale.check(now_us):
            row = QualityEventRow(
                f"stale:{self.exchange}:{symbol}:{self.stream}:{now_us}", self.exchange, symbol, self.stream,
                EventKind.STALE_FEED,
                0, 0, 1, now_us - silence_us, now_us, EventStatus.RECORDED, now_us, 0,
                f"no message for {silence_us / 1e6:.1f} s",
            )  # fmt: skip
            self._record(row)

    def _enqueue(self, job: _Job) -> None:
        self.backfilling += 1
        self._queue.put_nowait(job)

    def reopen(self, symbol: str, ids: np.ndarray, trade_times_us: np.ndarray, now_us: int) -> int:
        """Trades accepted here whose delivery failed and that storage does not hold (`k2 ingest`
        checks its topic first): re-opened as gaps, recorded OPEN and queued for backfill like any
        confirmed gap (:meth:`SequenceTracker.reopen`). Returns the number of ids re-opened."""
        key = StreamKey(self.exchange, symbol, self.stream)
        gaps = self.tracker.reopen(key, ids, trade_times_us, now_us)
        for gap in gaps:
            self._record(gap_row(gap, EventStatus.OPEN, now_us, 0, "delivery to Kafka failed"))
            if self.settings.quality.backfill:
                self._enqueue(_Job(gap))
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
        """Fetch queued gaps one after another until cancelled; rows (wire form) go to ``deliver``."""
        if self._fetcher is None:
            raise K2Error(f"{self.venue} has no REST backfill")
        fetcher = self._fetcher()
        try:
            while True:
                job = await self._queue.get()
                try:
                    written, problem = await self._backfill(fetcher, job.gap, deliver)
                except Exception as exc:  # a bug must not stop backfill: record it on the gap
                    log.error("backfill.failed", symbol=job.gap.key.symbol, first_id=job.gap.first_id, error=repr(exc))
                    written, problem = 0, _Problem(f"backfill failed: {exc!r}")
                finally:
                    self.backfilling -= 1
                self._settle(job, written, problem, fetcher.clock_us())
        finally:
            await fetcher.aclose()

    async def _backfill(
        self, fetcher: TradeFetcher, gap: Gap, deliver: Callable[[pa.RecordBatch], None]
    ) -> tuple[int, _Problem]:
        """Fetch ``gap`` page by page; returns the rows written and what went wrong (if anything)."""
        q = self.settings.quality
        fetched = written = 0
        if gap.count > q.max_backfill_trades:
            return 0, _Problem(
                f"gap of {gap.count} trades exceeds quality.max_backfill_trades={q.max_backfill_trades}", retry=False
            )
        problem = ""
        from_id = gap.first_id
        while from_id <= gap.last_id:
            limit = min(q.backfill_page_limit, gap.last_id - from_id + 1)
            try:
                parsed: FetchedTrades = await fetcher.page(gap, from_id, limit)
            except K2Error as exc:
                problem = str(exc)
                break
            if parsed.parsed.rejected and self._quarantine is not None:
                self._quarantine(parsed.parsed.rejected)
            if parsed.batch is None:  # every trade of the page was rejected (quarantined above)
                problem = f"a page of ids from {from_id} held no valid trade"
                break
            ids = np.asarray(parsed.ids, dtype=np.int64)
            in_range = ids <= gap.last_id
            keep = self.tracker.accept_backfill(gap.key, ids[in_range])
            fetched += int(np.count_nonzero(in_range))
            if keep.any():  # delivered in the same step as accepted: see recorded_state()
                deliver(parsed.batch.filter(pa.array(in_range)).filter(pa.array(keep)))
                written += int(np.count_nonzero(keep))
            from_id = max(from_id, int(ids.max()) + 1)
        self.stats.backfilled_rows += written
        BACKFILL_TRADES.labels(venue=self.venue).inc(written)
        return written, _Problem(problem or f"the venue returned {fetched} of {gap.count} trades")

    def _settle(self, job: _Job, written: int, problem: _Problem, now_us: int) -> None:
        """Record how a backfill attempt ended. A gap left incomplete is recorded UNRECOVERABLE once,
        then retried every ``quality.backfill_retry_interval_s`` for ``quality.backfill_retry_for_s``;
        a later success records it RESOLVED."""
        q = self.settings.quality
        gap = job.gap
        missing = self.tracker.missing_in(gap)
        if missing == 0:
            BACKFILL_GAPS.labels(venue=self.venue, outcome="resolved").inc()
            detail = "fetched over REST" + ("" if job.retry_until_us is None else " on a later retry")
            self._record(gap_row(gap, EventStatus.RESOLVED, now_us, written, detail))
            return
        self.tracker.abandon(gap)
        interval_us = int(q.backfill_retry_interval_s * 1e6)
        if job.retry_until_us is None:
            BACKFILL_GAPS.labels(venue=self.venue, outcome="unrecoverable").inc()
            detail = f"{missing} still missing: {problem.detail}"
            self._record(gap_row(gap, EventStatus.UNRECOVERABLE, now_us, written, detail))
            if problem.retry and q.backfill_retry_for_s > 0:
                until = now_us + int(q.backfill_retry_for_s * 1e6)
                self._retries.append(_Job(gap, until, now_us + interval_us))
        elif now_us + interval_us <= job.retry_until_us:
            self._retries.append(_Job(gap, job.retry_until_us, now_us + interval_us))
        else:
            log.warning("backfill.retries_exhausted", symbol=gap.key.symbol, first_id=gap.first_id, missing=missing)


@dataclass(frozen=True, slots=True)
class _Job:
    """A gap to backfill; ``retry_until_us`` is set on the slow retries of an unrecoverable gap."""

    gap: Gap
    retry_until_us: int | None = None
    due_us: int = 0


@dataclass(frozen=True, slots=True)
class _Problem:
    """Why a gap is still incomplete; ``retry`` False when trying again cannot help."""

    detail: str
    retry: bool = True
