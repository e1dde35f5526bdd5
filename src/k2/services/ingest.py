"""`k2 ingest`: WebSocket sessions -> venue parser -> Avro -> Kafka (distributed mode, producer side).

The same sources and parser as the embedded pipeline; instead of Iceberg, canonical batches go to
``market.<asset_class>.trades.<venue>`` keyed by symbol. Backpressure runs end to end: a full
producer queue suspends :meth:`TradeProducer.send`, which stops the parse loop, which (once the
frame backlog is full) suspends the session's sink and so the socket reads. Rejected frames go to
the quarantine as in embedded mode.

``platform_sequence`` starts at the wall-clock time in microseconds when the process starts and
increases by one per record, so it keeps increasing across restarts as long as a process produces
fewer than a million records per second on average.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.producer import TradeProducer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import TradeEncoder
from k2.bus.topics import dlq_topic, topic_name, value_subject
from k2.config import K2Settings
from k2.lake.quarantine import Quarantine
from k2.logging import get_logger
from k2.metrics import RECORDS_NORMALIZED
from k2.schema import TRADE
from k2.services.lifecycle import FrameBacklog, open_sessions, run_until_stopped
from k2.sources import DataType, load_adapter
from k2.sources.session import wall_clock_us
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)


@dataclass
class IngestStats:
    frames: int = 0
    trades: int = 0
    rejected: int = 0
    started_at: float = field(default_factory=time.monotonic)
    producer: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "trades": self.trades,
            "rejected": self.rejected,
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
        self.adapter = load_adapter(settings.source.venue, symbol_info=symbol_info)
        self.topic = topic_name(kafka.asset_class, DataType.TRADES.value, self.adapter.venue)
        ensure_topics(
            admin_client(kafka.bootstrap_servers),
            topic_specs(kafka, self.topic, dlq_topic(self.topic, kafka.dlq_suffix)),
        )
        registry = SchemaRegistry(kafka.schema_registry_url)
        try:
            schema_id = registry.register(value_subject(self.topic), TRADE)
        finally:
            registry.close()
        self.producer = TradeProducer(kafka, self.topic, TradeEncoder(schema_id, TRADE), overrides=producer_overrides)
        self.quarantine = Quarantine(settings.lake.quarantine_dir, self.adapter.venue)
        self.stats = IngestStats()
        self.urls, self._sessions = open_sessions(self.adapter, settings, ws_base_url)
        self._next_seq = wall_clock_us()
        self._parse_interval_s = parse_interval_s
        self._backlog = FrameBacklog(parse_batch_frames, 4 * parse_batch_frames)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop reading; everything already received is parsed, produced and flushed."""
        self._stopping.set()
        self._backlog.wake()
        for session in self._sessions:
            session.stop()

    async def run(self) -> IngestStats:
        log.info("ingest.start", venue=self.adapter.venue, topic=self.topic, urls=self.urls)
        session_tasks = [asyncio.create_task(s.run(self._backlog.sink)) for s in self._sessions]
        processor = asyncio.create_task(self._process_loop())
        try:
            done, _ = await asyncio.wait([*session_tasks, processor], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            self.stop()
            for task in session_tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*session_tasks, return_exceptions=True)
            if not processor.done():
                await processor
            timeout_s = self.settings.kafka.delivery_timeout_ms / 1000 + 5
            await asyncio.to_thread(self.producer.close, timeout_s)
            self.stats.producer = self.producer.stats.as_dict()
        log.info("ingest.stopped", topic=self.topic, **self.stats.as_dict())
        return self.stats

    async def _process_loop(self) -> None:
        while True:
            await self._backlog.wait(self._parse_interval_s)
            await self._produce_pending()
            self.producer.poll()
            self._backlog.release()
            if self._stopping.is_set() and not len(self._backlog):
                return

    async def _produce_pending(self) -> None:
        frames = self._backlog.take()
        if not frames:
            return
        self.stats.frames += len(frames)
        parsed = self.adapter.parse(frames, first_platform_sequence=self._next_seq, is_sample_data=self.is_sample_data)
        self.quarantine.add(parsed.rejected)
        self.stats.rejected += len(parsed.rejected)
        batch = parsed.records.get(DataType.TRADES)
        if batch is None or batch.num_rows == 0:
            return
        self._next_seq += batch.num_rows
        self.stats.trades += batch.num_rows
        RECORDS_NORMALIZED.labels(venue=self.adapter.venue, data_type=DataType.TRADES.value).inc(batch.num_rows)
        await self.producer.send(batch)


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
