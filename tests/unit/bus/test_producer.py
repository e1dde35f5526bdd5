"""BatchProducer's failed deliveries, with a real librdkafka client and no broker at all: every message
times out, is counted, and (``keep_failed``) kept with its value for its sender to decide on."""

from __future__ import annotations

import asyncio
import socket
import time

import pyarrow as pa

from k2.bus.producer import BatchProducer
from k2.bus.serde import AvroEncoder
from k2.config import KafkaSettings
from k2.feed.stamp import parse_canonical
from k2.schema import TRADE
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_deliveries_are_counted_and_kept_with_their_values(bundled_frames: list[RawFrame]) -> None:
    batch: pa.RecordBatch = parse_canonical(
        "binance", bundled_frames[:3], symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_closed_port()}", delivery_timeout_ms=300)
    encoder = AvroEncoder(7, TRADE)
    producer = BatchProducer(kafka, "t", encoder, keep_failed=True, overrides={"log_level": 0})
    before_ms = time.time_ns() // 10**6
    asyncio.run(producer.send(batch))
    assert producer.flush(10.0) == 0  # all reported: as failures
    assert (producer.stats.delivered, producer.stats.failed) == (0, 3)
    failed = producer.take_failed()
    assert [f.value for f in failed] == encoder.encode(batch)
    assert all(f.partition == -1 for f in failed)  # no metadata: never partitioned, never sent
    assert all(before_ms <= f.reported_ms <= time.time_ns() // 10**6 for f in failed)
    assert producer.take_failed() == []
    assert producer.settled  # nothing queued or in flight: nothing can be persisted later
    producer.close(1.0)


def test_failed_deliveries_are_not_kept_unless_asked(bundled_frames: list[RawFrame]) -> None:
    batch = parse_canonical(
        "binance", bundled_frames[:2], symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    )
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_closed_port()}", delivery_timeout_ms=300)
    producer = BatchProducer(kafka, "t", AvroEncoder(7, TRADE), overrides={"log_level": 0})
    asyncio.run(producer.send(batch.records[RecordKind.TRADES]))
    assert producer.flush(10.0) == 0
    assert producer.stats.failed == 2 and producer.take_failed() == []
    producer.close(1.0)
