"""`k2 ingest`: WebSocket sessions -> venue parser -> completeness -> Avro -> Kafka (distributed mode, producer side).

The same sources, parser and completeness stage (:class:`~k2.services.intake.TradeIntake`) as the
embedded pipeline; instead of Iceberg, canonical batches go to ``market.<asset_class>.trades.<venue>``
keyed by symbol, and quality events (gaps OPEN/RESOLVED/UNRECOVERABLE, duplicates dropped,
reorders, anomalies) to ``market.<asset_class>.quality_events.<venue>``, which `k2 consume` commits
to the quality-events table. Gaps are backfilled over REST and the fetched trades produced to the
trades topic like live ones. On start the sequence tracker is seeded from the newest messages of
the trades topic (:func:`k2.bus.tail.read_tail`, read further back until every subscribed
symbol's position is known), so the gap a restart leaves is found and backfilled, and trades
already sent are dropped as duplicates (docs/quality.md). Trades whose delivery fails while the
process runs (Kafka down longer than ``kafka.delivery_timeout_ms``) are re-opened as a gap once the
topic shows it lacks them, and backfilled (:mod:`k2.services.redelivery`).

Backpressure runs end to end: a full producer queue suspends :meth:`BatchProducer.send`, which
stops the parse loop, which (once the frame backlog is full) suspends the session's sink and so the
socket reads. Rejected frames go to the quarantine as in embedded mode.

``platform_sequence`` starts at the wall-clock time in microseconds when the process starts and
increases by one per record, so it keeps increasing across restarts as long as a process produces
fewer than a million records per second on average.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.producer import BatchProducer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder, AvroEncoder
from k2.bus.tail import read_tail
from k2.bus.topics import dlq_topic, quality_events_topic, trades_topic, value_subject
from k2.config import K2Settings
from k2.lake.quarantine import Quarantine
from k2.logging import get_logger
from k2.quality.records import events_batch, open_gaps
from k2.schema import TRADE
from k2.schema.quality_event import QUALITY_EVENT
from k2.services.completeness import Completeness, topic_seed, unplaced
from k2.services.intake import TradeIntake
from k2.services.lifecycle import FrameBacklog, open_sessions, run_until_stopped, supervise
from k2.services.redelivery import Redelivery
from k2.sources import load_adapter
from k2.sources.session import wall_clock_us
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)


@dataclass
class IngestStats:
    frames: int = 0
    trades: int = 0
    rejected: int = 0
    backfilled: int = 0
    events: int = 0
    started_at: float = field(default_factory=time.monotonic)
    producer: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "trades": self.trades,
            "rejected": self.rejected,
            "backfilled": self.backfilled,
            "events": self.events,
            "elapsed_s": round(time.monotonic() - self.started_at, 3),
            **{f"producer_{k}": v for k, v in self.producer.items()},
        }


class IngestService:
    """Streams one venue's trades into its Kafka topic."""

    def __init__(
        self,
        settings: K2Settings,
        *,
        ws_base_url: str | None = None,
        is_sample_data: bool = False,
        symbol_info: Mapping[str, SymbolInfo] | None = None,
        parse_batch_frames: int = 5_000,
        parse_interval_s: float = 0.05,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        kafka = settings.kafka
        self.is_sample_data = is_sample_data
        self.adapter = load_adapter(
            settings.source.venue, settings.source.symbols, symbol_info=symbol_info,
            validation=settings.source.validation,
        )  # fmt: skip
        self.topic = trades_topic(kafka.asset_class, self.adapter.venue)
        self.events_topic = quality_events_topic(kafka.asset_class, self.adapter.venue)
        admin = admin_client(kafka.bootstrap_servers)
        for topic in (self.topic, self.events_topic):
            ensure_topics(admin, topic_specs(kafka, topic, dlq_topic(topic, kafka.dlq_suffix)))
        registry = SchemaRegistry(kafka.schema_registry_url)
        try:
            schema_id = registry.register(value_subject(self.topic), TRADE)
            events_schema_id = registry.register(value_subject(self.events_topic), QUALITY_EVENT)
            # What this venue already sent: the tracker's seed (restart gaps, duplicates), and the gaps
            # recorded OPEN whose RESOLVED row a crash may have lost.
            # Read back until every subscribed symbol's position is known, however quiet it has been.
            window = settings.quality.seed_messages
            sent = read_tail(
                kafka.bootstrap_servers, self.topic, AvroDecoder(TRADE, registry.fetch), max_messages=window,
                further=functools.partial(unplaced, symbols=settings.source.symbols),
                limit=settings.quality.seed_max_messages,
            )  # fmt: skip
            recorded = read_tail(
                kafka.bootstrap_servers, self.events_topic, AvroDecoder(QUALITY_EVENT, registry.fetch),
                max_messages=window,
            )  # fmt: skip
        finally:
            registry.close()
        self.producer = BatchProducer(
            kafka, self.topic, AvroEncoder(schema_id, TRADE), overrides=producer_overrides, keep_failed=True
        )
        self.events_producer = BatchProducer(
            kafka, self.events_topic, AvroEncoder(events_schema_id, QUALITY_EVENT),
            client_id="k2-ingest-quality", overrides=producer_overrides,
        )  # fmt: skip
        self.quarantine = Quarantine(settings.lake.quarantine_dir, self.adapter.venue)
        seed = topic_seed(sent)
        self.completeness = Completeness(
            settings, exchange=self.adapter.exchange, venue=self.adapter.venue, is_sample_data=is_sample_data,
            now_us=wall_clock_us(), seed=seed, symbol_info=symbol_info,
        )  # fmt: skip
        self.completeness.resolve_stored(open_gaps(recorded.rows), seed, wall_clock_us())
        self.redelivery = Redelivery(kafka, self.topic, schema_id, self.completeness)
        self.intake = TradeIntake(
            self.adapter, self.quarantine, self.completeness,
            next_sequence=wall_clock_us(), is_sample_data=is_sample_data,
        )  # fmt: skip
        self.stats = IngestStats()
        self.urls, self._sessions = open_sessions(self.adapter, settings, ws_base_url)
        self._parse_interval_s = parse_interval_s
        self._backlog = FrameBacklog(parse_batch_frames, 4 * parse_batch_frames)
        self._backfilled: list[pa.RecordBatch] = []
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop reading; everything already received is parsed, produced and flushed."""
        self._stopping.set()
        self._backlog.wake()
        for session in self._sessions:
            session.stop()

    def get_stats(self) -> dict[str, Any]:
        out = self.stats.as_dict()
        out["backlog_frames"] = len(self._backlog)
        out["quality"] = self.completeness.stats.as_dict()
        out["undelivered"] = {
            "waiting": self.redelivery.waiting, "reopened": self.redelivery.reopened,
            "held_by_topic": self.redelivery.persisted,
        }  # fmt: skip
        return out

    async def run(self) -> IngestStats:
        log.info("ingest.start", venue=self.adapter.venue, topic=self.topic, urls=self.urls)
        backfill = None
        if self.settings.quality.backfill:
            backfill = functools.partial(self.completeness.run_backfill, self._backfilled.append)
        try:
            await supervise(self._sessions, self._backlog.sink, self._process_loop, self.stop, backfill)
        finally:
            self.redelivery.cancel()
            timeout_s = self.settings.kafka.delivery_timeout_ms / 1000 + 5
            await asyncio.to_thread(self.producer.close, timeout_s)
            await asyncio.to_thread(self.events_producer.close, timeout_s)
            self.stats.producer = self.producer.stats.as_dict()
        log.info("ingest.stopped", topic=self.topic, **self.stats.as_dict())
        return self.stats

    async def _process_loop(self) -> None:
        while True:
            await self._backlog.wait(self._parse_interval_s)
            await self._produce_pending()
            self.redelivery.step(self.producer.take_failed(), self.producer.settled, wall_clock_us())
            self.completeness.tick(wall_clock_us())
            await self._produce_backfilled()
            await self._produce_events()  # after the trades they describe
            self.producer.poll()
            self.events_producer.poll()
            self._backlog.release()
            idle = not len(self._backlog) and not self._backfilled and not self.completeness.has_events
            if self._stopping.is_set() and idle:
                return

    async def _produce_pending(self) -> None:
        frames = self._backlog.take()
        if not frames:
            return
        self.stats.frames += len(frames)
        parsed = self.intake.parse(frames)
        self.stats.rejected += parsed.rejected
        if parsed.trades is not None:
            self.stats.trades += parsed.trades.num_rows
            await self.producer.send(parsed.trades)

    async def _produce_backfilled(self) -> None:
        while self._backfilled:
            batch = self.intake.numbered(self._backfilled.pop(0))
            self.stats.backfilled += batch.num_rows
            await self.producer.send(batch)

    async def _produce_events(self) -> None:
        if self.completeness.has_events:
            events = self.completeness.take_events()
            self.stats.events += len(events)
            await self.events_producer.send(events_batch(events))


async def run_ingest(
    settings: K2Settings,
    *,
    ws_base_url: str | None = None,
    duration_s: float | None = None,
    is_sample_data: bool = False,
    symbol_info: Mapping[str, SymbolInfo] | None = None,
) -> IngestStats:
    """Run the producer until SIGINT/SIGTERM or ``duration_s``; flush everything received."""
    service = IngestService(settings, ws_base_url=ws_base_url, is_sample_data=is_sample_data, symbol_info=symbol_info)
    return await run_until_stopped(service.run, service.stop, settings, duration_s)
