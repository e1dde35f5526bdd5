"""The newest messages of a topic, decoded: what `k2 ingest` already produced, read back on start.

`k2 ingest` seeds its sequence tracker from its own topic, not from the Iceberg table: the table
lags the topic by whatever the consumers have not committed yet, so only the topic says which trade
ids were already sent. Each partition is read from ``high watermark - max_messages`` (or its first
offset) to its high watermark with a throw-away consumer (no group, nothing
committed). Messages that do not decode are skipped (the consumer dead-letters them anyway).
The window is a message count, not a time span, so a restart after any downtime still finds the
newest ids; its cost is one decode per message read (about 13 µs, see BENCHMARKS.md).
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from k2.bus.serde import AvroDecoder
from k2.errors import BusError
from k2.logging import get_logger

log = get_logger(__name__)


def read_tail(
    bootstrap_servers: str,
    topic: str,
    decoder: AvroDecoder,
    *,
    max_messages: int,
    timeout_s: float = 60.0,
) -> pa.Table:
    """Up to ``max_messages`` of each partition's newest messages, decoded with ``decoder``: one table
    (possibly empty)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"k2-tail-{uuid.uuid4().hex[:12]}",  # never joins: assign() only, commits nothing
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        return _read(consumer, topic, decoder, max_messages, timeout_s)
    except KafkaException as exc:
        raise BusError(f"cannot read the tail of {topic}: {exc}") from exc
    finally:
        consumer.close()


def _read(consumer: Consumer, topic: str, decoder: AvroDecoder, max_messages: int, timeout_s: float) -> pa.Table:
    deadline = time.monotonic() + timeout_s
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise BusError(f"topic {topic} does not exist")
    starts: list[TopicPartition] = []
    ends: dict[int, int] = {}
    for partition in sorted(metadata.topics[topic].partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        start = max(low, high - max_messages)
        if start < high:
            starts.append(TopicPartition(topic, partition, start))
            ends[partition] = high
    values: list[bytes | None] = []
    if starts:
        consumer.assign(starts)
        while ends:
            if time.monotonic() > deadline:
                raise BusError(f"reading the tail of {topic} took more than {timeout_s:.0f} s")
            for msg in consumer.consume(10_000, 0.5):
                partition = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                        ends.pop(partition, None)
                        continue
                    raise BusError(f"reading the tail of {topic}: {err.str()}")
                offset = msg.offset()
                if partition not in ends or offset is None or offset >= ends[partition]:
                    continue
                values.append(msg.value())
                if offset >= ends[partition] - 1:
                    ends.pop(partition)
    result = decoder.decode(values)
    log.info("bus.tail_read", topic=topic, messages=len(values), rows=result.batch.num_rows, skipped=len(result.errors))
    return pa.Table.from_batches([result.batch])
