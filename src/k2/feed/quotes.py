"""Quote completeness at ingest (id policy ``increasing``): repeats dropped, late updates flagged,
crossed books counted, silent streams reported; no gap tracking and no backfill.

A quote's update id only increases (:class:`k2.quality.quotes.QuoteTracker`): a missing id proves
nothing, and no venue serves past quotes over REST. A crossed or locked book (bid >= ask) is
quarantined by the parser (``crossed_book``) and counted here as a CROSSED_QUOTE quality event. The
highest update id of every stream is committed with the rows (:meth:`QuoteCompleteness.recorded_state`)
so that, after a restart, an update not newer than the last committed one is dropped as a repeat.
See docs/quality.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import K2Settings
from k2.feed.trades import count_anomalies
from k2.logging import get_logger
from k2.metrics import QUALITY_AFFECTED_TRADES, QUALITY_EVENTS
from k2.quality.checks import StaleFeedCheck
from k2.quality.quotes import QuoteTracker
from k2.quality.records import QualityEventRow, sequence_row
from k2.quality.sequence import StreamKey
from k2.schema.quality_event import EventKind, EventStatus
from k2.sources.base import Rejected, RejectReason
from k2.stats import Counters

log = get_logger(__name__)

QUOTE_STATE_PREFIX = "k2.quote-state."


def quote_state_property(exchange: str) -> str:
    """The snapshot-summary property holding an exchange's quote high-water marks."""
    return QUOTE_STATE_PREFIX + exchange.lower()


def decode_quote_state(text: str, exchange: str, stream: str) -> dict[StreamKey, int]:
    """``{symbol: high}`` JSON (:meth:`QuoteCompleteness.recorded_state`) back to stream keys."""
    return {StreamKey(exchange, symbol, stream): int(high) for symbol, high in json.loads(text).items()}


@dataclass
class QuoteStats(Counters):
    duplicates_dropped: int = 0
    out_of_order: int = 0
    crossed: int = 0
    stale: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)


class QuoteCompleteness:
    """Update-id tracking and checks for one venue's quote streams."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        exchange: str,
        venue: str,
        stream: str,
        state: Mapping[StreamKey, int] | None = None,
    ) -> None:
        self.exchange = exchange
        self.venue = venue
        self.stream = stream
        self.stats = QuoteStats()
        self.tracker = QuoteTracker(settings.quality.quote_dedup_window)
        self._stale = StaleFeedCheck(int(settings.quality.stale_after_s * 1e6))
        self._events: list[QualityEventRow] = []
        for key, high in (state or {}).items():
            self.tracker.restore(key, high)

    def recorded_state(self) -> dict[str, str]:
        """The high-water marks as one snapshot-summary property (committed with the quote rows)."""
        highs = {key.symbol: high for key, high in self.tracker.checkpoint().items() if key.exchange == self.exchange}
        return {quote_state_property(self.exchange): json.dumps(highs, sort_keys=True, separators=(",", ":"))}

    def ingest(self, batch: pa.RecordBatch, now_us: int) -> pa.RecordBatch:
        """``batch`` without repeated updates; late ones kept and flagged."""
        symbols = batch.column("symbol")
        ids_all = batch.column("source_sequence").to_numpy()
        received = batch.column("ingestion_timestamp").cast(pa.int64()).to_numpy()
        keep = np.ones(batch.num_rows, dtype=bool)
        for symbol in pc.unique(symbols).to_pylist():
            idx = np.flatnonzero(pc.equal(symbols, symbol).to_numpy(zero_copy_only=False))
            obs = self.tracker.observe(
                StreamKey(self.exchange, symbol, self.stream), ids_all[idx], received[idx], now_us
            )
            keep[idx] = obs.keep
            self._stale.seen(symbol, int(received[idx].max()))
            for event in obs.events:
                self._record(sequence_row(event))
        return batch if keep.all() else batch.filter(pa.array(keep))

    def rejected(self, rejects: Sequence[Rejected]) -> None:
        """Count crossed books (quarantined by the parser) as CROSSED_QUOTE anomalies."""
        n = sum(1 for r in rejects if r.reason is RejectReason.CROSSED_BOOK)
        if n:
            self.stats.crossed += n
            count_anomalies(self.venue, EventKind.CROSSED_QUOTE, n, self.stats.anomalies)

    def tick(self, now_us: int) -> None:
        """Report quote streams silent for longer than ``quality.stale_after_s``."""
        for symbol, silence_us in self._stale.check(now_us):
            self.stats.stale += 1
            row = QualityEventRow(
                f"stale:{self.exchange}:{symbol}:{self.stream}:{now_us}", self.exchange, symbol, self.stream,
                EventKind.STALE_FEED, 0, 0, 1, now_us - silence_us, now_us, EventStatus.RECORDED, now_us, 0,
                f"no message for {silence_us / 1e6:.1f} s",
            )  # fmt: skip
            self._record(row)

    def take_events(self) -> list[QualityEventRow]:
        events, self._events = self._events, []
        return events

    def _record(self, row: QualityEventRow) -> None:
        self._events.append(row)
        QUALITY_EVENTS.labels(venue=self.venue, kind=row.kind.value).inc()
        QUALITY_AFFECTED_TRADES.labels(venue=self.venue, kind=row.kind.value).inc(row.count)
        if row.kind is EventKind.DUPLICATE:
            self.stats.duplicates_dropped += row.count
        elif row.kind is EventKind.OUT_OF_ORDER:
            self.stats.out_of_order += row.count
        log.debug("quality.event", kind=row.kind.value, symbol=row.symbol, stream=self.stream, count=row.count)
