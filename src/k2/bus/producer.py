"""BatchProducer: canonical batches -> Confluent-framed Avro -> one Kafka topic, nothing dropped silently.

``confluent_kafka.Producer`` with ``enable.idempotence=true`` and ``acks=all`` (no duplicates or
reordering from retries), compression, and the Java client's ``murmur2`` partitioner so the key
(the symbol) maps to the same partition as with any other Kafka client. The local queue is bounded
(``kafka.producer_queue_messages``); when it is full :meth:`BatchProducer.send` waits (serving
delivery reports) until it has drained to half, which suspends the caller and so the WebSocket
source: backpressure, never a drop. Every delivery report is counted
(``k2_producer_messages_total{result}``); a message that could not be delivered within
``kafka.delivery_timeout_ms`` (after librdkafka's retries) is counted as failed and logged, and,
with ``keep_failed``, kept (:meth:`BatchProducer.take_failed`) so that its sender can find out
whether the broker holds it after all ("possibly persisted") and send it again if not: `k2 ingest`
re-opens such trades as a gap (see :mod:`k2.bus.redelivery`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, Message, Producer

from k2.bus.serde import AvroEncoder
from k2.config import KafkaSettings
from k2.errors import BusError
from k2.logging import RateLimitedLogger, get_logger
from k2.metrics import PRODUCER_BACKPRESSURE, PRODUCER_MESSAGES, PRODUCER_QUEUE_MESSAGES
from k2.stats import Counters

log = get_logger(__name__)

_POLL_EVERY = 1_000  # serve delivery reports every N produced messages
_DRAIN_SLEEP_S = 0.005


def producer_config(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    """librdkafka settings of K2's producers."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.codec": kafka.compression,
        "linger.ms": kafka.linger_ms,
        "queue.buffering.max.messages": kafka.producer_queue_messages,
        "message.timeout.ms": kafka.delivery_timeout_ms,
        "partitioner": "murmur2_random",
    }


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A message librdkafka gave up on: its value, its partition (-1: never assigned, so never sent)
    and when the failure was reported (wall clock, ms). librdkafka reports no create time for a
    failed message, but it was produced at most ``delivery_timeout_ms`` before the report: any copy
    the broker persisted carries a create time after ``reported_ms - delivery_timeout_ms``."""

    value: bytes
    partition: int
    reported_ms: int


@dataclass
class ProducerStats(Counters):
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    backpressure_waits: int = 0


class BatchProducer:
    """Produces canonical batches (trades, quality events) to ``topic``, keyed by their ``symbol`` column."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        encoder: AvroEncoder,
        *,
        client_id: str = "k2-ingest",
        overrides: Mapping[str, Any] | None = None,
        keep_failed: bool = False,
    ) -> None:
        self.topic = topic
        self.stats = ProducerStats()
        self._keep_failed = keep_failed
        self._failed: list[FailedDelivery] = []
        self._failing: set[int] = set()  # partitions with a failure not followed by a delivery yet
        self._encoder = encoder
        self._queue_limit = kafka.producer_queue_messages
        self._reported = ProducerStats()
        self._limited = RateLimitedLogger(log, interval_s=10.0)
        config = producer_config(kafka, client_id) | dict(overrides or {})
        config["error_cb"] = self._on_error
        self._producer = Producer(config)

    # --- sending ------------------------------------------------------------------------------------
    async def send(self, batch: pa.RecordBatch) -> None:
        """Queue every row of ``batch``; waits (backpressure) while the local queue is full."""
        if batch.num_rows == 0:
            return
        values = self._encoder.encode(batch)
        keys = batch.column("symbol").cast(pa.binary()).to_pylist()  # UTF-8 bytes, as Kafka keys are
        produce = self._producer.produce
        topic = self.topic
        on_delivery = self._on_delivery
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    await self._wait_for_room()
            if i % _POLL_EVERY == 0:
                self._producer.poll(0)
        self.stats.produced += len(values)
        self.poll()
        await asyncio.sleep(0)

    async def _wait_for_room(self) -> None:
        self.stats.backpressure_waits += 1
        PRODUCER_BACKPRESSURE.labels(topic=self.topic).inc()
        self._limited.warning("producer.backpressure", "backpressure", topic=self.topic, queued=len(self._producer))
        while True:
            self.poll()
            if len(self._producer) <= self._queue_limit // 2:
                return
            await asyncio.sleep(_DRAIN_SLEEP_S)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports and publish the counters."""
        self._producer.poll(timeout_s)
        self._publish()

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every queued message to be acknowledged; how many are left."""
        remaining = int(self._producer.flush(timeout_s))
        self._publish()
        return remaining

    @property
    def queued(self) -> int:
        return len(self._producer)

    def take_failed(self) -> list[FailedDelivery]:
        """The failed messages kept since the last call (``keep_failed``), oldest first."""
        failed, self._failed = self._failed, []
        return failed

    @property
    def settled(self) -> bool:
        """Whether every partition that saw a failure has since delivered a later message (or nothing
        is queued or in flight at all): the idempotent producer then never persists a failed message
        later, so what the topic holds of them now is final."""
        return not self._failing or len(self._producer) == 0

    # --- reports ------------------------------------------------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        partition = msg.partition()
        if err is None:
            self.stats.delivered += 1
            if self._failing:
                self._failing.discard(partition if partition is not None else -1)
            return
        self.stats.failed += 1
        if partition is not None and partition >= 0:
            self._failing.add(partition)
        if self._keep_failed:
            value = msg.value()
            if value is not None:
                self._failed.append(
                    FailedDelivery(value, -1 if partition is None else partition, time.time_ns() // 10**6)
                )
        self._limited.warning(
            "producer.delivery_failed",
            err.name(),
            topic=self.topic,
            partition=msg.partition(),
            error=err.str(),
            code=err.name(),
            retriable=err.retriable(),
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("producer.fatal_error", error=err.str(), code=err.name())
        else:
            self._limited.warning("producer.error", err.name(), error=err.str(), code=err.name())

    def _publish(self) -> None:
        delivered = self.stats.delivered - self._reported.delivered
        failed = self.stats.failed - self._reported.failed
        if delivered:
            PRODUCER_MESSAGES.labels(topic=self.topic, result="delivered").inc(delivered)
        if failed:
            PRODUCER_MESSAGES.labels(topic=self.topic, result="failed").inc(failed)
        self._reported.delivered = self.stats.delivered
        self._reported.failed = self.stats.failed
        PRODUCER_QUEUE_MESSAGES.labels(topic=self.topic).set(len(self._producer))

    def close(self, timeout_s: float) -> int:
        """Flush; the messages still unacknowledged are counted as lost (failed) and logged."""
        remaining = self.flush(timeout_s)
        if remaining:
            self.stats.failed += remaining
            self._publish()
            log.error("producer.unflushed_at_close", topic=self.topic, lost=remaining)
        return remaining


def check_fatal(err: KafkaError) -> None:
    """Raise :class:`~k2.errors.BusError` for a fatal client error (the client cannot go on)."""
    if err.fatal():
        raise BusError(f"fatal Kafka error: {err.str()}")
