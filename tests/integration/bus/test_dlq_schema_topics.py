"""Dead letters, schema evolution against the real registry, and topic checks against the real broker."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.consumer import IcebergConsumer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder, AvroEncoder, frame
from k2.bus.topics import dlq_topic, value_subject
from k2.config import K2Settings
from k2.errors import IncompatibleSchema, TopicMismatch
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.metrics import CONSUMER_DEAD_LETTERS
from k2.query import QueryEngine
from k2.schema import TRADE, TRADE_V2, TRADE_V3, to_iceberg
from k2.schema.kinds import RecordKind
from k2.schema.model import Field, LongType
from k2.services.consume import build_consumer, default_topics
from tests.integration.bus.conftest import assert_exactly, produce, table_rows
from tests.unit.lake.test_evolution import _as_v2, _v2_table

pytestmark = pytest.mark.integration


def _read_all(settings: K2Settings, topic: str, count: int) -> list[tuple[bytes, list[tuple[str, bytes]], int, int]]:
    """(value, headers, partition, offset) of the first ``count`` messages of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"reader-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes, list[tuple[str, bytes]], int, int]] = []
    try:
        for _ in range(200):
            for msg in consumer.consume(count, 0.5):
                if msg.error() is None:
                    out.append((msg.value(), list(msg.headers() or []), msg.partition(), msg.offset()))
            if len(out) >= count:
                break
    finally:
        consumer.close()
    return out


def test_bad_messages_go_to_the_dead_letter_topic_and_never_stall(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    settings = bus_settings.model_copy(update={"kafka": bus_settings.kafka.model_copy(update={"partitions": 1})})
    good = recording_batch.slice(0, 1_000)
    topic = produce(settings, good.slice(0, 500))
    valid = AvroEncoder(1, TRADE).encode(good.slice(0, 1))[0]
    bad = [b"not avro at all", frame(987_654, valid[5:]), valid[:-4]]
    raw = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for value in bad:
        raw.produce(topic, value, b"BTCUSDT", headers=[("origin", b"test")])
    assert raw.flush(10) == 0
    produce(settings, good.slice(500, 500))
    before = CONSUMER_DEAD_LETTERS.labels(topic=topic, reason="undecodable")._value.get()

    consumer, registry = build_consumer(settings)
    stats = consumer.run(idle_exit_s=2.0, duration_s=60)
    registry.close()
    assert stats.messages == 1_003
    assert stats.dead_lettered == 3
    assert stats.rows_committed == 1_000
    assert_exactly(settings, good)
    assert CONSUMER_DEAD_LETTERS.labels(topic=topic, reason="undecodable")._value.get() == before + 1

    letters = _read_all(settings, dlq_topic(topic), 3)
    assert [v for v, _, _, _ in letters] == bad
    reasons = [dict(h)["k2.dlq.reason"] for _, h, _, _ in letters]
    assert reasons == [b"not_framed", b"unknown_schema", b"undecodable"]
    for (_, headers, _, _), offset in zip(letters, (500, 501, 502), strict=True):
        h = dict(headers)
        assert h["origin"] == b"test"
        assert h["k2.dlq.source.topic"] == topic.encode()
        assert h["k2.dlq.source.partition"] == b"0"
        assert h["k2.dlq.source.offset"] == str(offset).encode()
        assert h["k2.dlq.consumer.group"] == settings.kafka.consumer_group.encode()
    assert b"987654" in dict(letters[1][1])["k2.dlq.error"]


def test_an_upgrade_reads_the_old_table_and_the_old_messages(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    """Before: a K2 at trade v2 produced 300 messages (schema v2) and its consumer wrote 200 of them to a
    v2 table. After the upgrade: the producer registers v3 (BACKWARD compatible: the registry accepts it)
    and sends 300 more; the new consumer evolves the table on start and consumes the rest of the v2
    messages and the v3 ones, exactly once. Old rows and old messages have no instrument; queries by
    instrument find them by their venue symbol. A consumer not upgraded yet still reads v3 messages."""
    settings = bus_settings.model_copy(update={"kafka": bus_settings.kafka.model_copy(update={"partitions": 1})})
    v2_rows = _as_v2(recording_batch.slice(0, 300)).combine_chunks().to_batches()[0]
    topic = produce(settings, v2_rows, TRADE_V2)
    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    subject = value_subject(topic)
    assert registry.is_compatible(subject, TRADE_V3) is True
    v2_id = registry.register(subject, TRADE_V2)

    lake = settings.lake
    _v2_table(open_catalog(lake), lake)
    old, old_registry = _v2_consumer(settings)
    assert old.run(max_messages=200, idle_exit_s=2.0, duration_s=60).rows_committed >= 200
    old_registry.close()
    before = table_rows(settings).num_rows
    assert 200 <= before < 300

    produce(settings, recording_batch.slice(300, 300), TRADE_V3)
    v3_id = registry.register(subject, TRADE_V3)
    assert v2_id != v3_id
    consumer, reg = build_consumer(settings)  # evolves the table: trade v3
    assert consumer.run(idle_exit_s=2.0, duration_s=60).rows_committed == 600 - before
    reg.close()
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    assert table.schema() == to_iceberg(TRADE_V3)
    got = table_rows(settings).sort_by("platform_sequence")
    assert got.num_rows == 600 and len(set(got.column("message_id").to_pylist())) == 600
    assert (
        got.column("instrument").to_pylist()
        == [None] * 300 + recording_batch.slice(300, 300).column("instrument").to_pylist()
    )
    btc = QueryEngine.from_settings(settings).query_trades(instrument="BTC/USDT", limit=1_000).table
    want = [r["message_id"] for r in recording_batch.slice(0, 600).to_pylist() if r["symbol"] == "BTCUSDT"]
    assert sorted(btc.column("message_id").to_pylist()) == sorted(want)
    assert set(btc.column("instrument").to_pylist()) == {"BTC/USDT"}

    # A v2 reader (a consumer not upgraded yet) decodes both; a v3 reader too.
    values = [v for v, _, _, _ in _read_all(settings, topic, 600)]
    old_rows = AvroDecoder(TRADE_V2, registry.fetch).decode(values)
    assert old_rows.errors == [] and old_rows.batch.to_pylist() == _as_v2(recording_batch.slice(0, 600)).to_pylist()
    new_rows = AvroDecoder(TRADE_V3, registry.fetch).decode(values)
    assert [r["instrument"] for r in new_rows.batch.to_pylist()][:300] == [None] * 300

    # An incompatible change (a new required field) is refused by the registry, by name.
    breaking = dataclasses.replace(
        TRADE_V3, version=4, fields=(*TRADE_V3.fields, Field(21, "venue_latency_us", LongType(), "x"))
    )
    assert registry.is_compatible(subject, breaking) is False
    with pytest.raises(IncompatibleSchema, match=r"Trade v4 is not BACKWARD compatible .*-value"):
        registry.register(subject, breaking)
    registry.close()


def _v2_consumer(settings: K2Settings) -> tuple[IcebergConsumer, SchemaRegistry]:
    """The consumer a K2 at trade v2 ran: a v2 reader writing to the v2 table."""
    lake = settings.lake
    topic = default_topics(settings)[0]
    writer = TableWriter(open_catalog(lake), (lake.namespace, lake.trades_table), lake)
    registry = SchemaRegistry(settings.kafka.schema_registry_url)
    decoder = AvroDecoder(TRADE_V2, registry.fetch)
    kafka = settings.kafka.model_copy(update={"batch_size": 50})  # stops near max_messages
    consumer = IcebergConsumer(
        kafka, [topic], decoder, writer, flush_rows=100, flush_seconds=lake.flush_seconds, client_id="v2"
    )
    return consumer, registry


def test_existing_topics_that_differ_from_the_settings_are_refused(bus_settings: K2Settings) -> None:
    kafka = bus_settings.kafka
    topic = f"market.{kafka.asset_class}.trades.binance"
    admin = admin_client(kafka.bootstrap_servers)
    assert ensure_topics(admin, topic_specs(kafka, topic, dlq_topic(topic))) == [topic, dlq_topic(topic)]
    assert ensure_topics(admin, topic_specs(kafka, topic, dlq_topic(topic))) == []  # idempotent
    other = kafka.model_copy(update={"partitions": 4, "retention_ms": 3_600_000})
    with pytest.raises(TopicMismatch) as info:
        ensure_topics(admin, topic_specs(other, topic, dlq_topic(topic)))
    message = str(info.value)
    assert f"topic {topic} differs" in message
    assert "3 partitions, configured 4" in message
    assert f"retention.ms={kafka.retention_ms}, configured 3600000" in message


class _RacingAdmin(AdminClient):  # type: ignore[misc]
    """An admin client whose ``create_topics`` first waits for every other creator to get there: each
    has then checked that the topics are missing, so all of them create them at once (the race of
    processes started together, forced instead of hoped for)."""

    def __init__(self, bootstrap_servers: str, barrier: threading.Barrier) -> None:
        super().__init__({"bootstrap.servers": bootstrap_servers})
        self._barrier = barrier

    def create_topics(self, *args: Any, **kwargs: Any) -> Any:
        self._barrier.wait(timeout=60)
        return super().create_topics(*args, **kwargs)


def test_processes_starting_together_all_create_the_topics_and_all_succeed(bus_settings: K2Settings) -> None:
    """Creators that all found the topics missing all create them: the losers' TOPIC_ALREADY_EXISTS is
    success, and the topics exist once, as configured."""
    kafka = bus_settings.kafka
    topic = f"market.{kafka.asset_class}.quality_events.binance"
    specs = topic_specs(kafka, topic, dlq_topic(topic))
    barrier = threading.Barrier(4)

    def start(_: int) -> list[str]:
        return ensure_topics(_RacingAdmin(kafka.bootstrap_servers, barrier), specs)

    with ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(start, range(4)))  # each raised BusUnavailable before the fix
    # Every creator took the create path (the barrier let none through alone) and none failed.
    assert attempts == [[topic, dlq_topic(topic)]] * 4
    admin = admin_client(kafka.bootstrap_servers)
    assert ensure_topics(admin, specs) == []  # now present, and as configured (TopicMismatch otherwise)
    listed = admin.list_topics(timeout=10).topics
    assert (len(listed[topic].partitions), len(listed[dlq_topic(topic)].partitions)) == (kafka.partitions, 1)
