"""KafkaSink: `k2 ingest`'s sink. Each kind's rows go to the venue's topic of that kind, Avro in the
Confluent wire format, keyed by symbol.

:meth:`KafkaSink.add` produces (and waits while a producer's local queue is full: the backpressure
that stops the runner, and so the socket); :meth:`KafkaSink.tick` serves delivery reports and hands
the trades producer's failed deliveries to :class:`~k2.bus.redelivery.Redelivery` (re-opened as gaps
once the topic shows it lacks them); a flush with ``wait`` waits for every acknowledgement. The
checkpoint is not needed: a restart reads what was sent back from the topics (docs/kafka.md).
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
    """Produces each kind's rows with its :class:`BatchProducer` (see the module docstring)."""

    name = "kafka"

    def __init__(self, producers: Mapping[RecordKind, BatchProducer], *, close_timeout_s: float) -> None:
        self.producers = dict(producers)
        self.redelivery: Redelivery | None = None  # set once the trades' completeness exists
        self._close_timeout_s = close_timeout_s

    async def add(self, kind: RecordKind, batch: pa.RecordBatch) -> None:
        await self.producers[kind].send(batch)

    @property
    def pending_rows(self) -> int:
        """Messages queued or in flight, not acknowledged yet."""
        return sum(p.queued for p in self.producers.values())

    async def tick(self) -> None:
        for producer in self.producers.values():
            producer.poll()
        trades = self.producers.get(RecordKind.TRADES)
        if self.redelivery is not None and trades is not None:
            self.redelivery.step(trades.take_failed(), trades.settled, wall_clock_us())

    async def flush(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        if not wait:
            await self.tick()
            return
        for producer in self.producers.values():
            await asyncio.to_thread(producer.flush, self._close_timeout_s)
        await self.tick()

    async def close(self) -> None:
        if self.redelivery is not None:
            self.redelivery.cancel()
        for producer in self.producers.values():
            await asyncio.to_thread(producer.close, self._close_timeout_s)

    def get_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {k.value: p.stats.as_dict() for k, p in self.producers.items()}
        if self.redelivery is not None:
            out["undelivered"] = {
                "waiting": self.redelivery.waiting, "reopened": self.redelivery.reopened,
                "held_by_topic": self.redelivery.persisted,
            }  # fmt: skip
        return out
