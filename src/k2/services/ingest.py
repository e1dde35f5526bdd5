"""`k2 ingest`: the configured venues' feeds run into Kafka (distributed mode, producer side).

Composition only, per venue: its topics (one per record kind, ``market.<asset_class>.<kind>.<venue>``,
plus its quality-events topic) checked or created, each kind's value schema registered, what the
topics say the feed starts from (:func:`topic_start`: the trades topic read back until every
subscribed symbol's position is known, gaps left OPEN in the events topic, the quotes' newest update
ids) and its :class:`~k2.feed.feed.VenueFeed`; then the one :class:`~k2.feed.runner.FeedRunner` with
one :class:`~k2.bus.sink.KafkaSink` holding every venue's producers. Gaps are backfilled over REST and
the fetched trades produced like live ones; trades whose delivery fails while the process runs (Kafka
down longer than ``kafka.delivery_timeout_ms``) are re-opened as a gap once the topic shows it lacks
them (:mod:`k2.bus.redelivery`). Backpressure runs end to end: a full producer queue suspends the sink,
which stops the runner, which (once the frame backlog is full) stops reading the socket.

``platform_sequence`` starts at the wall-clock time in microseconds when the process starts and
increases by one per record of a kind, so it keeps increasing across restarts as long as a process
produces fewer than a million records of a kind per second on average.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.producer import BatchProducer
from k2.bus.redelivery import Redelivery
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder, AvroEncoder
from k2.bus.sink import KafkaSink
from k2.bus.tail import Tail, read_tail
from k2.bus.topics import dlq_topic, kind_topic, value_subject
from k2.config import K2Settings
from k2.feed.feed import FeedStart, VenueFeed
from k2.feed.runner import FeedRunner
from k2.feed.trades import TradeCompleteness, topic_seed, unplaced
from k2.feed.venues import feed_specs
from k2.lake.quarantine import Quarantine
from k2.logging import get_logger
from k2.quality.records import open_gaps
from k2.quality.sequence import StreamKey
from k2.schema.kinds import RecordKind, spec
from k2.services.lifecycle import run_until_stopped
from k2.sources.session import wall_clock_us
from k2.sources.symbols import SymbolInfo
from k2.sources.venue import Venue
from k2.stats import Counters

log = get_logger(__name__)


@dataclass
class IngestStats(Counters):
    frames: int = 0
    trades: int = 0
    quotes: int = 0
    rejected: int = 0
    backfilled: int = 0
    events: int = 0
    started_at: float = field(default_factory=time.monotonic)
    producer: dict[str, int] = field(default_factory=dict)


def topic_start(
    settings: K2Settings, venue: Venue, kinds: tuple[RecordKind, ...], topics: Mapping[RecordKind, str],
    registry: SchemaRegistry, symbols: Sequence[str],
) -> FeedStart:  # fmt: skip
    """What ``venue``'s topics say its feed starts from (what this venue already sent); ``symbols``: the
    feed's, venue-native."""
    kafka, quality = settings.kafka, settings.quality
    now = wall_clock_us()
    start = FeedStart(next_sequence=dict.fromkeys(kinds, now))

    def tail(kind: RecordKind, **kwargs: Any) -> Tail:
        decoder = AvroDecoder(spec(kind).record, registry.fetch)
        return read_tail(kafka.bootstrap_servers, topics[kind], decoder, max_messages=quality.seed_messages, **kwargs)

    if RecordKind.TRADES in kinds:
        # Read back until every subscribed symbol's position is known, however quiet it has been.
        sent = tail(
            RecordKind.TRADES, further=functools.partial(unplaced, symbols=tuple(symbols)),
            limit=quality.seed_max_messages,
        )  # fmt: skip
        start.trade_seed = topic_seed(sent)
        start.open_gaps = open_gaps(tail(RecordKind.QUALITY_EVENTS).rows)
    if RecordKind.QUOTES in kinds:
        rows = tail(RecordKind.QUOTES).rows
        if rows.num_rows:
            highs = rows.group_by("symbol").aggregate([("source_sequence", "max")])
            stream = venue.streams[RecordKind.QUOTES]
            start.quote_state = {
                StreamKey(venue.exchange, s, stream): int(h)
                for s, h in zip(highs["symbol"].to_pylist(), highs["source_sequence_max"].to_pylist(), strict=True)
                if h is not None
            }
    return start


class IngestService:
    """Streams the configured venues' kinds into their Kafka topics: one :class:`VenueFeed` per venue
    (``source.venues``, or ``source.venue``), all in one :class:`FeedRunner` with one :class:`KafkaSink`."""

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
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """Arguments as :class:`~k2.services.pipeline.EmbeddedPipeline`'s."""
        self.settings = settings
        kafka = settings.kafka
        specs = feed_specs(settings.source, kinds=kinds, ws_url=ws_base_url, rest_url=rest_url)
        admin = admin_client(kafka.bootstrap_servers)
        registry = SchemaRegistry(kafka.schema_registry_url)
        self.topics_of: dict[str, dict[RecordKind, str]] = {}  # venue -> kind -> topic
        self.feeds: list[VenueFeed] = []
        producers: dict[tuple[str, RecordKind], BatchProducer] = {}
        schema_ids: dict[tuple[str, RecordKind], int] = {}
        try:
            for fs in specs:
                venue, name = fs.venue, fs.name
                topics = {k: kind_topic(kafka.asset_class, k, name) for k in (*fs.kinds, RecordKind.QUALITY_EVENTS)}
                self.topics_of[name] = topics
                for topic in topics.values():
                    ensure_topics(admin, topic_specs(kafka, topic, dlq_topic(topic, kafka.dlq_suffix)))
                for k, t in topics.items():
                    schema_ids[(name, k)] = registry.register(value_subject(t), spec(k).record)
                rules = venue.rules((symbol_info or {}).get(name))
                natives = [rules.native(s) for s in fs.symbols]
                start = topic_start(settings, venue, fs.kinds, topics, registry, natives)
                for k, topic in topics.items():
                    producers[(name, k)] = BatchProducer(
                        kafka, topic, AvroEncoder(schema_ids[(name, k)], spec(k).record),
                        client_id=f"k2-ingest-{name}-{k.value}", overrides=producer_overrides,
                        keep_failed=k is RecordKind.TRADES,
                    )  # fmt: skip
                self.feeds.append(
                    VenueFeed(
                        venue, settings, symbols=fs.symbols, kinds=fs.kinds, rules=rules,
                        quarantine=Quarantine(settings.lake.quarantine_dir, name), start=start,
                        is_sample_data=is_sample_data, ws_base_url=fs.ws_url or venue.ws_url, rest_url=fs.rest_url,
                    )
                )  # fmt: skip
        finally:
            registry.close()
        self.sink = KafkaSink(producers, close_timeout_s=kafka.delivery_timeout_ms / 1000 + 5)
        for feed in self.feeds:
            if feed.trades is not None:
                key = (feed.name, RecordKind.TRADES)
                self.sink.redelivery[feed.name] = Redelivery(
                    kafka, self.topics_of[feed.name][RecordKind.TRADES], schema_ids[key], feed.trades
                )
        self.topics = self.topics_of[self.feed.name]
        self.topic = self.topics.get(RecordKind.TRADES, "")
        self.kinds = tuple(k for k in RecordKind if any(k in f.kinds for f in self.feeds))
        self.urls = [url for feed in self.feeds for url in feed.urls]
        lake = settings.lake
        self.runner = FeedRunner(
            self.feeds, self.sink, flush_rows=lake.flush_rows, flush_seconds=lake.flush_seconds,
            parse_batch_frames=parse_batch_frames, parse_interval_s=parse_interval_s,
        )  # fmt: skip
        self._started = time.monotonic()

    # --- what tests and the CLI look at (the first venue's, unless named) ---------------------------
    @property
    def feed(self) -> VenueFeed:
        """The first venue's feed (the only one in a single-venue run)."""
        return self.feeds[0]

    @property
    def venue(self) -> Venue:
        return self.feed.venue

    @property
    def quarantine(self) -> Quarantine:
        return self.feed.quarantine

    @property
    def producer(self) -> BatchProducer:
        """The first venue's trades producer."""
        return self.sink.producers[(self.feed.name, RecordKind.TRADES)]

    @property
    def events_producer(self) -> BatchProducer:
        return self.sink.producers[(self.feed.name, RecordKind.QUALITY_EVENTS)]

    @property
    def completeness(self) -> TradeCompleteness:
        if self.feed.trades is None:
            raise ValueError("this ingest does not capture trades")
        return self.feed.trades

    @property
    def stats(self) -> IngestStats:
        """Every venue's figures added up; ``producer``: the trades producers' (per venue: ``get_stats``)."""
        backfilled = sum(f.trades.stats.backfilled_rows for f in self.feeds if f.trades is not None)
        producer: dict[str, int] = {}
        for (_, kind), p in self.sink.producers.items():
            if kind is RecordKind.TRADES:
                for key, value in p.stats.as_dict().items():
                    if isinstance(value, int):
                        producer[key] = producer.get(key, 0) + value
        return IngestStats(
            frames=sum(f.frames for f in self.feeds),
            trades=sum(f.rows.get(RecordKind.TRADES.value, 0) for f in self.feeds) - backfilled,
            quotes=sum(f.rows.get(RecordKind.QUOTES.value, 0) for f in self.feeds),
            rejected=sum(f.rejected for f in self.feeds),
            backfilled=backfilled,
            events=sum(p.stats.produced for (_, k), p in self.sink.producers.items() if k is RecordKind.QUALITY_EVENTS),
            started_at=self._started,
            producer=producer,
        )

    def get_stats(self) -> dict[str, Any]:
        out = self.stats.as_dict()
        out["backlog_frames"] = self.runner.backlog_frames()
        out["quality"] = self.feed.trades.stats.as_dict() if self.feed.trades else {}
        out["quote_quality"] = self.feed.quotes.stats.as_dict() if self.feed.quotes else {}
        sink = self.sink.get_stats()
        if "undelivered" in sink:
            out["undelivered"] = sink["undelivered"]
        out["venues"] = {f.name: f.get_stats() for f in self.feeds}
        return out

    def stop(self) -> None:
        """Stop reading; everything already received is parsed, produced and flushed."""
        self.runner.stop()

    async def run(self) -> IngestStats:
        topics = sorted(t for by_kind in self.topics_of.values() for t in by_kind.values())
        log.info("ingest.start", venues=[f.name for f in self.feeds], topics=topics, urls=self.urls)
        await self.runner.run()
        stats = self.stats
        log.info("ingest.stopped", venues=[f.name for f in self.feeds], **stats.as_dict())
        return stats


async def run_ingest(
    settings: K2Settings,
    *,
    ws_base_url: str | None = None,
    duration_s: float | None = None,
    is_sample_data: bool = False,
    symbol_info: Mapping[str, Mapping[str, SymbolInfo] | None] | None = None,
) -> IngestStats:
    """Run the producer until SIGINT/SIGTERM or ``duration_s``; flush everything received."""
    service = IngestService(settings, ws_base_url=ws_base_url, is_sample_data=is_sample_data, symbol_info=symbol_info)
    return await run_until_stopped(service.run, service.stop, settings, duration_s)


__all__ = ["IngestService", "IngestStats", "run_ingest", "topic_start"]
