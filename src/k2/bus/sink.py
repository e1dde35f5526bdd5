"""KafkaSink: `k2 ingest`'s sink. Each kind's rows go to their venue's topic of that kind, Avro in the
Confluent wire format, keyed by symbol.

:meth:`KafkaSink.add` produces with the (venue, kind)'s producer (and waits while its local queue is
full: the backpressure that stops the runner, and so the socket); :meth:`KafkaSink.tick` serves
delivery reports and hands each venue's trades producer's failed deliveries to that venue's
:class:`~k2.bus.redelivery.Redelivery` (re-opened as gaps once the topic shows it lacks them); a
flush with ``wait`` waits for every acknowledgement. The checkpoint is not needed: a restart reads
what was sent back from the topics (docs/kafka.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from k2.bus.producer import BatchProducer
from k2.bus.redelivery import Redelivery
from k2.feed.sink import Checkpoint, Sink
from k2.logging import get_logger
from k2.schema.kinds import RecordKind
from k2.sources.session import wall_clock_us

log = get_logger(__name__)


class KafkaSink(Sink):
    """Produces each (venue, kind)'s rows with its :class:`BatchProducer` (see the module docstring)."""

    name = "kafka"

    def __init__(self, producers: Mapping[tuple[str, RecordKind], BatchProducer], *, close_timeout_s: float) -> None:
        self.producers = dict(producers)
        self.redelivery: dict[str, Redelivery] = {}  # per venue, set once its trades' completeness exists
        self._close_timeout_s = close_timeout_s

    async def add(self, kind: RecordKind, batch: pa.RecordBatch, venue: str) -> None:
        await self.producers[(venue, kind)].send(batch)

    @property
    def pending_rows(self) -> int:
        """Messages queued or in flight, not acknowledged yet."""
        return sum(p.queued for p in self.producers.values())

    async def tick(self) -> None:
        for producer in self.producers.values():
            producer.poll()
        for venue, redelivery in self.redelivery.items():
            trades = self.producers.get((venue, RecordKind.TRADES))
            if trades is not None:
                redelivery.step(trades.take_failed(), trades.settled, wall_clock_us())

    async def flush(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        if not wait:
            await self.tick()
            return
        for producer in self.producers.values():
            await asyncio.to_thread(producer.flush, self._close_timeout_s)
        await self.tick()

    async def close(self) -> None:
        for redelivery in self.redelivery.values():
            redelivery.cancel()
        for producer in self.producers.values():
            await asyncio.to_thread(producer.close, self._close_timeout_s)

    def get_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {p.topic: p.stats.as_dict() for p in self.producers.values()}
        if self.redelivery:
            redeliveries = self.redelivery.values()
            out["undelivered"] = {
                "waiting": sum(r.waiting for r in redeliveries), "reopened": sum(r.reopened for r in redeliveries),
                "held_by_topic": sum(r.persisted for r in redeliveries),
            }  # fmt: skip
        return out
