"""The embedded pipeline: the configured venues' feeds run into the local Iceberg warehouse (no broker).

Composition only: the tables and their :class:`~k2.lake.sink.IcebergSink`, what the tables say each
venue's feed starts from (:func:`embedded_start`: platform sequences, the recorded completeness state,
gaps left OPEN, all per venue), one :class:`~k2.feed.feed.VenueFeed` per venue and the one
:class:`~k2.feed.runner.FeedRunner`. See docs/lake.md for commits, docs/quality.md for the restart
guarantee and docs/venues.md for several venues in one process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from k2.config import K2Settings
from k2.errors import ConfigError
from k2.feed.feed import FeedStart, VenueFeed, recovered_sequences
from k2.feed.quotes import decode_quote_state, quote_state_property
from k2.feed.runner import FeedRunner
from k2.feed.trades import TradeCompleteness
from k2.feed.venues import feed_specs
from k2.lake.catalog import open_catalog
from k2.lake.quality_events import gap_events
from k2.lake.quarantine import Quarantine
from k2.lake.sequence_state import recover_state, stored_ids
from k2.lake.sink import IcebergSink, recovered_properties
from k2.logging import get_logger
from k2.quality.records import open_gaps
from k2.schema.kinds import RecordKind
from k2.sources.symbols import SymbolInfo
from k2.sources.venue import Venue
from k2.stats import Counters

log = get_logger(__name__)


@dataclass
class PipelineStats(Counters):
    """What a run did (a view over the feed, the runner and the sink)."""

    frames: int = 0
    trades: int = 0
    quotes: int = 0
    rejected: int = 0
    rows_committed: int = 0  # trades
    quotes_committed: int = 0
    commits: int = 0
    commit_failures: int = 0
    last_commit_at: datetime | None = None
    started_at: float = field(default_factory=time.monotonic)
    trades_by_symbol: dict[str, int] = field(default_factory=dict)


def embedded_start(sink: IcebergSink, venue: Venue, kinds: tuple[RecordKind, ...], *, seed_ids: int) -> FeedStart:
    """What the tables say ``venue``'s feed starts from."""
    props = {k: recovered_properties(sink.tables[k]) for k in kinds}
    start = FeedStart(next_sequence=recovered_sequences(props, venue.name))
    if RecordKind.TRADES in kinds:
        trades = sink.tables[RecordKind.TRADES]
        recovered = recover_state(trades, venue.exchange)
        log.info("pipeline.sequence_state", source=recovered.reason, snapshot_id=recovered.snapshot_id)
        start.trade_state = recovered.states
        if recovered.states is None:
            start.trade_seed = stored_ids(trades, venue.exchange, seed_ids)
        start.open_gaps = open_gaps(gap_events(sink.tables[RecordKind.QUALITY_EVENTS]))
    if RecordKind.QUOTES in kinds:
        text = props[RecordKind.QUOTES].get(quote_state_property(venue.exchange))
        if text is not None:
            start.quote_state = decode_quote_state(text, venue.exchange, venue.streams[RecordKind.QUOTES])
    return start


class EmbeddedPipeline:
    """Streams the configured venues' kinds into the local Iceberg warehouse: one :class:`VenueFeed` per
    venue (``source.venues``, or ``source.venue``), all in one :class:`FeedRunner` and one sink, so one
    loop, one flush rule and one commit per table per flush carry every venue's rows and checkpoint."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        ws_base_url: str | None = None,
        rest_url: str | None = None,
        is_sample_data: bool = False,
        symbol_info: Mapping[str, Mapping[str, SymbolInfo] | None] | None = None,
        kinds: tuple[RecordKind, ...] | None = None,
        parse_batch_frames: int = 5_000,
        parse_interval_s: float = 0.05,
    ) -> None:
        """``ws_base_url``/``rest_url``: every venue's URLs unless ``source.feeds.<venue>`` sets its own;
        ``symbol_info``: live symbol metadata per venue name (missing: the venue's offline rule);
        ``kinds``: instead of the settings' (each venue takes those it serves when several run)."""
        self.settings = settings
        lake = settings.lake
        specs = feed_specs(settings.source, kinds=kinds, ws_url=ws_base_url, rest_url=rest_url)
        self.kinds = tuple(k for k in RecordKind if any(k in spec.kinds for spec in specs))
        self.catalog = open_catalog(lake)
        self.sink = IcebergSink(self.catalog, lake, (*self.kinds, RecordKind.QUALITY_EVENTS))
        self.feeds: list[VenueFeed] = []
        for spec in specs:
            venue = spec.venue
            start = embedded_start(self.sink, venue, spec.kinds, seed_ids=settings.quality.seed_ids)
            self.feeds.append(
                VenueFeed(
                    venue, settings, symbols=spec.symbols, kinds=spec.kinds,
                    rules=venue.rules((symbol_info or {}).get(venue.name)),
                    quarantine=Quarantine(lake.quarantine_dir, venue.name), start=start, is_sample_data=is_sample_data,
                    ws_base_url=spec.ws_url or venue.ws_url, rest_url=spec.rest_url,
                )
            )  # fmt: skip
        self.urls = [url for feed in self.feeds for url in feed.urls]
        self.runner = FeedRunner(
            self.feeds, self.sink, flush_rows=lake.flush_rows, flush_seconds=lake.flush_seconds,
            parse_batch_frames=parse_batch_frames, parse_interval_s=parse_interval_s,
        )  # fmt: skip
        self._started = time.monotonic()

    @property
    def feed(self) -> VenueFeed:
        """The first venue's feed (the only one in a single-venue run)."""
        return self.feeds[0]

    def feed_of(self, venue: str) -> VenueFeed:
        for feed in self.feeds:
            if feed.name == venue:
                return feed
        raise ConfigError(f"this pipeline does not run {venue!r}")

    @property
    def venue(self) -> Venue:
        return self.feed.venue

    @property
    def quarantine(self) -> Quarantine:
        return self.feed.quarantine

    @property
    def completeness(self) -> TradeCompleteness:
        """The first venue's trades completeness stage (tracker, gaps, backfill)."""
        if self.feed.trades is None:
            raise ConfigError("this pipeline does not capture trades")
        return self.feed.trades

    @property
    def next_platform_sequence(self) -> int:
        """The platform_sequence the first venue's next trade gets (recovered from the table on start)."""
        return self.feed.next_sequence(RecordKind.TRADES)

    @property
    def stats(self) -> PipelineStats:
        """Every venue's figures added up (per venue: :meth:`get_stats` ``venues``)."""
        sink = self.sink
        by_symbol: dict[str, int] = {}
        for feed in self.feeds:
            for symbol, n in feed.rows_by_symbol.items():
                by_symbol[symbol] = by_symbol.get(symbol, 0) + n
        return PipelineStats(
            frames=sum(f.frames for f in self.feeds),
            trades=sum(f.rows.get(RecordKind.TRADES.value, 0) for f in self.feeds),
            quotes=sum(f.rows.get(RecordKind.QUOTES.value, 0) for f in self.feeds),
            rejected=sum(f.rejected for f in self.feeds),
            rows_committed=sink.rows_committed.get(RecordKind.TRADES, 0),
            quotes_committed=sink.rows_committed.get(RecordKind.QUOTES, 0),
            commits=sink.commits,
            commit_failures=sink.commit_failures,
            last_commit_at=sink.last_commit_at,
            started_at=self._started,
            trades_by_symbol=by_symbol,
        )

    def get_stats(self) -> dict[str, Any]:
        out = self.stats.as_dict()
        feed = self.feed.get_stats()
        out["backlog_frames"] = self.runner.backlog_frames()
        out["buffered_rows"] = self.sink.pending_rows
        out["sessions"] = [s for f in self.feeds for s in f.get_stats()["sessions"]]
        out["writers"] = {k.value: w.get_stats() for k, w in self.sink.writers.items()}
        out["quarantine"] = feed["quarantine"]
        out["quality"] = self.feed.trades.stats.as_dict() if self.feed.trades else {}
        out["quote_quality"] = self.feed.quotes.stats.as_dict() if self.feed.quotes else {}
        out["venues"] = {f.name: f.get_stats() for f in self.feeds}
        return out

    def stop(self) -> None:
        """Ask the pipeline to finish: stop reading, then parse and commit everything received."""
        self.runner.stop()

    async def run(self) -> PipelineStats:
        """Run until :meth:`stop` (or a session fails fatally); returns the final stats."""
        log.info(
            "pipeline.start", venues=[f.name for f in self.feeds], urls=self.urls,
            warehouse=str(self.settings.lake.warehouse),
        )  # fmt: skip
        await self.runner.run()
        stats = self.stats
        log.info("pipeline.stopped", **stats.as_dict())
        return stats
