"""Three brokers (replication factor 3, min.insync.replicas 2): a broker SIGKILLed while producing and
consuming loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.producer import BatchProducer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroEncoder
from k2.bus.topics import dlq_topic, topic_name, value_subject
from k2.config import K2Settings
from k2.schema import TRADE
from k2.services.consume import build_consumer
from tests.integration.bus.conftest import assert_exactly
from tests.integration.services.fixtures import KafkaService

pytestmark = pytest.mark.integration


def test_a_broker_killed_mid_stream_loses_and_duplicates_nothing(
    bus_settings: K2Settings, kafka3: KafkaService, recording_batch: pa.RecordBatch
) -> None:
    kafka = bus_settings.kafka.model_copy(
        update={"bootstrap_servers": kafka3.bootstrap_servers, "replication_factor": 3, "partitions": 3}
    )
    settings = bus_settings.model_copy(update={"kafka": kafka})
    topic = topic_name(kafka.asset_class, "trades", "binance")
    ensure_topics(admin_client(kafka.bootstrap_servers), topic_specs(kafka, topic, dlq_topic(topic)))
    registry = SchemaRegistry(kafka.schema_registry_url)
    producer = BatchProducer(kafka, topic, AvroEncoder(registry.register(value_subject(topic), TRADE), TRADE))
    registry.close()
    data = recording_batch.slice(0, 15_000)

    asyncio.run(producer.send(data.slice(0, 5_000)))
    assert producer.flush(30) == 0
    consumer, reg = build_consumer(settings)
    assert consumer.run(max_messages=2_500, duration_s=60).rows_committed >= 2_500  # a first part is committed
    reg.close()

    kafka3.cluster.kill(2)  # some partition leaders move; acks=all still has 2 in-sync replicas
    try:
        asyncio.run(producer.send(data.slice(5_000, 5_000)))
        assert producer.flush(60) == 0
        consumer, reg = build_consumer(settings)  # resumes from the table's offsets with a broker down
        consumer.run(max_messages=4_000, duration_s=60)
        reg.close()
    finally:
        kafka3.cluster.restart(2)
    asyncio.run(producer.send(data.slice(10_000, 5_000)))
    assert producer.close(60) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (15_000, 0)

    consumer, reg = build_consumer(settings)
    consumer.run(idle_exit_s=2.0, duration_s=120)
    reg.close()
    assert_exactly(settings, data)
