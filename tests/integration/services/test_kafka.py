"""Kafka from k2.devservices over real connections: produce and consume; survive a broker crash with RF 3."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import eventually
from tests.integration.services.fixtures import KafkaService

pytestmark = [pytest.mark.integration, pytest.mark.services]


def _create_topic(bootstrap: str, replication: int) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep a reference until the future resolves
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=replication)])
    futures[topic].result(timeout=30)
    return topic


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list[KafkaError] = []
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode(), on_delivery=lambda e, _m: e and errors.append(e))
    assert producer.flush(30) == 0
    assert errors == []


def _consume(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes, int]] = []
    try:
        for _ in range(300):  # bounded: 300 polls of at most 0.2 s
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append((msg.key(), msg.value(), msg.offset()))
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got


def test_single_broker_produce_consume(kafka: KafkaService) -> None:
    assert kafka.brokers == 1
    topic = _create_topic(kafka.bootstrap_servers, replication=1)
    _produce(kafka.bootstrap_servers, topic, [b"alpha", b"beta", b"gamma"])
    assert _consume(kafka.bootstrap_servers, topic, 3) == [(b"0", b"alpha", 0), (b"1", b"beta", 1), (b"2", b"gamma", 2)]


def test_three_brokers_survive_one_killed(kafka3: KafkaService) -> None:
    bootstrap = kafka3.bootstrap_servers
    topic = _create_topic(bootstrap, replication=3)
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def replicas() -> list[int]:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        return sorted(partitions[0].replicas) if 0 in partitions else []

    assert eventually(replicas, timeout=20, interval=0.2) == [1, 2, 3]
    _produce(bootstrap, topic, [b"before"])

    kafka3.cluster.kill(2)  # SIGKILL: 2 in-sync replicas remain, acks=all still succeeds
    _produce(bootstrap, topic, [b"during"])
    kafka3.cluster.restart(2)
    _produce(bootstrap, topic, [b"after"])

    values = [value for _key, value, _offset in _consume(bootstrap, topic, 3)]
    assert values == [b"before", b"during", b"after"]
