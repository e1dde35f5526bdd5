"""Every kind of undecodable message, written by a raw producer into K2's own topics: `k2 consume`
dead-letters each with its reason (also when a restart resumes right on it) and commits the valid
messages around them exactly once; `k2 ingest` starts, skipping and counting them in its tail read.

The kinds: a wrong magic byte, a value too short to be framed, a tombstone, an id the registry does
not know, the id of the ``"string"`` schema commonly registered for keys (a registered non-record
schema: before the fix it crashed `k2 consume` on every restart and stopped `k2 ingest` from
starting), the id of another record type (a quality event in the trades topic, and a trade in the
quality-events topic), and a truncated body.
"""

from __future__ import annotations

import io

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder, AvroEncoder, frame
from k2.bus.tail import read_tail
from k2.bus.topics import dlq_topic, quality_events_topic, trades_topic, value_subject
from k2.config import K2Settings
from k2.quality.records import QualityEventRow, events_batch
from k2.quality.sequence import StreamKey
from k2.schema import TRADE
from k2.schema.quality_event import QUALITY_EVENT, EventKind, EventStatus
from k2.services.consume import build_consumer
from k2.services.ingest import IngestService
from tests.integration.bus.conftest import assert_exactly, produce

pytestmark = pytest.mark.integration


def _read_all(settings: K2Settings, topic: str) -> list[tuple[bytes | None, dict[str, bytes], int]]:
    """(value, headers, offset) of every message of ``topic`` (one partition), read up to its high
    watermark, so "no more than these" is known without waiting for messages that never come."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"reader-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[tuple[bytes | None, dict[str, bytes], int]] = []
    try:
        for _ in range(120):  # bounded: 60 s at most
            if high == 0 or (out and out[-1][2] >= high - 1):
                break
            messages = [m for m in consumer.consume(high, 0.5) if m.error() is None]
            out += [(m.value(), dict(m.headers() or []), m.offset()) for m in messages]
    finally:
        consumer.close()
    return out


def _key_schema_id(settings: K2Settings, topic: str) -> int:
    """Register the ``"string"`` schema for the topic's keys, as Confluent clients commonly do."""
    with SchemaRegistryClient({"url": settings.kafka.schema_registry_url}) as client:
        return int(client.register_schema(f"{topic}-key", Schema('"string"', "AVRO")))


def _string_body(text: str) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "string", text)
    return buf.getvalue()


def _quality_event_value(settings: K2Settings) -> bytes:
    events = quality_events_topic(settings.kafka.asset_class, "binance")
    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    schema_id = registry.register(value_subject(events), QUALITY_EVENT)
    registry.close()
    row = QualityEventRow(
        "e1", "BINANCE", "BTCUSDT", "trade", EventKind.GAP, 100, 139, 40,
        1_723_075_200_000_000, 1_795_600_000_123_456, EventStatus.OPEN, 1_795_600_000_123_456, 0, "",
    )  # fmt: skip
    return AvroEncoder(schema_id, QUALITY_EVENT).encode(events_batch([row]))[0]


def _bad_values(settings: K2Settings, topic: str, valid: bytes) -> tuple[list[bytes | None], list[bytes]]:
    """The undecodable values and the DLQ reason each must get."""
    bad: list[tuple[bytes | None, bytes]] = [
        (b"\x01" + valid[1:], b"not_framed"),  # wrong magic byte
        (b"\x00\x00", b"not_framed"),  # too short for a header
        (None, b"not_framed"),  # a tombstone
        (frame(987_654, valid[5:]), b"unknown_schema"),
        (frame(_key_schema_id(settings, topic), _string_body("BTCUSDT")), b"incompatible_schema"),
        (_quality_event_value(settings), b"incompatible_schema"),  # another record type
        (valid[:-4], b"undecodable"),  # truncated body
    ]
    return [v for v, _ in bad], [r for _, r in bad]


def _produce_raw(settings: K2Settings, topic: str, values: list[bytes | None]) -> None:
    raw = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for value in values:
        raw.produce(topic, value, b"BTCUSDT", headers=[("origin", b"test")])
    assert raw.flush(10) == 0


def test_every_undecodable_kind_is_dead_lettered_also_when_a_restart_resumes_on_it(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    settings = bus_settings.model_copy(update={"kafka": bus_settings.kafka.model_copy(update={"partitions": 1})})
    good = recording_batch.slice(0, 1_000)
    topic = produce(settings, good.slice(0, 500))

    # Run 1 commits the first 500: the table's recorded offset is 500, where the bad messages start.
    consumer, registry = build_consumer(settings)
    assert consumer.run(idle_exit_s=2.0, duration_s=60).rows_committed == 500
    registry.close()

    valid = AvroEncoder(1, TRADE).encode(good.slice(0, 1))[0]
    bad, reasons = _bad_values(settings, topic, valid)
    _produce_raw(settings, topic, bad)
    produce(settings, good.slice(500, 500))

    # Run 2 (a restart) resumes right on the first bad message: every one is dead-lettered, none stalls it.
    consumer, registry = build_consumer(settings)
    stats = consumer.run(idle_exit_s=2.0, duration_s=60)
    registry.close()
    assert (stats.messages, stats.dead_lettered, stats.rows_committed) == (500 + len(bad), len(bad), 500)
    assert_exactly(settings, good)

    letters = _read_all(settings, dlq_topic(topic))
    assert [v for v, _, _ in letters] == bad
    assert [h["k2.dlq.reason"] for _, h, _ in letters] == reasons
    assert [h["k2.dlq.source.offset"] for _, h, _ in letters] == [str(500 + i).encode() for i in range(len(bad))]
    assert all(h["origin"] == b"test" and h["k2.dlq.source.topic"] == topic.encode() for _, h, _ in letters)
    errors = [h["k2.dlq.error"].decode() for _, h, _ in letters]
    assert "is a string schema, not a Trade record" in errors[4]
    assert "(k2.quality.QualityEvent) does not resolve to Trade" in errors[5]

    # Run 3: nothing new; nothing is committed or dead-lettered twice.
    consumer, registry = build_consumer(settings)
    again = consumer.run(idle_exit_s=2.0, duration_s=60)
    registry.close()
    assert (again.messages, again.dead_lettered, again.rows_committed) == (0, 0, 0)
    assert_exactly(settings, good)
    assert len(_read_all(settings, dlq_topic(topic))) == len(bad)


def test_ingest_starts_over_undecodable_messages_in_its_topics(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    """`k2 ingest` seeds its tracker from the tail of its trades topic and reads its quality-events
    topic on start: bad messages at the end of both are skipped and counted, never a failed start."""
    settings = bus_settings.model_copy(update={"kafka": bus_settings.kafka.model_copy(update={"partitions": 1})})
    good = recording_batch.slice(0, 800)
    topic = produce(settings, good)
    assert topic == trades_topic(settings.kafka.asset_class, "binance")
    valid = AvroEncoder(1, TRADE).encode(good.slice(0, 1))[0]
    bad, reasons = _bad_values(settings, topic, valid)
    _produce_raw(settings, topic, bad)
    events = quality_events_topic(settings.kafka.asset_class, "binance")
    ensure_topics(
        admin_client(settings.kafka.bootstrap_servers), topic_specs(settings.kafka, events, dlq_topic(events))
    )
    _produce_raw(settings, events, [frame(_key_schema_id(settings, events), _string_body("BTCUSDT")), valid])

    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    tail = read_tail(settings.kafka.bootstrap_servers, topic, AvroDecoder(TRADE, registry.fetch), max_messages=10_000)
    registry.close()
    assert tail.rows.num_rows == 800
    assert dict(tail.skipped) == {"not_framed": 3, "unknown_schema": 1, "incompatible_schema": 2, "undecodable": 1}
    assert sum(reasons.count(r.encode()) for r in tail.skipped) == len(bad)

    service = IngestService(settings, ws_base_url="ws://127.0.0.1:9", is_sample_data=True)
    try:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            ids = [int(t) for s, t in zip(good["symbol"].to_pylist(), good["trade_id"].to_pylist(), strict=True)
                   if s == symbol]  # fmt: skip
            key = StreamKey(service.venue.exchange, symbol)
            assert service.completeness.tracker.high(key) == max(ids)
    finally:
        service.producer.close(5.0)
        service.events_producer.close(5.0)
