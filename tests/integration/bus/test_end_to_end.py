"""Emulator -> `k2 ingest` machinery -> Kafka (real broker) -> `k2 consume` machinery -> Iceberg.

The table must hold exactly the recording: 34,419 trades, each once, every value equal to what the
parser makes of the raw frames (exact decimals, sides, vendor_data, UTC microsecond timestamps).
"""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaException

from k2.bus.offsets import offsets_property, table_offsets
from k2.bus.topics import topic_name
from k2.config import K2Settings
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from k2.services.consume import build_consumer
from k2.services.ingest import IngestService
from tests.conftest import eventually, eventually_async
from tests.integration.bus.conftest import assert_exactly, high_watermarks

pytestmark = pytest.mark.integration


async def _ingest(settings: K2Settings) -> IngestService:
    async with BinanceEmulator(ReplayConfig(speed=None)) as emu:
        service = IngestService(settings, ws_base_url=emu.url, is_sample_data=True)
        run = asyncio.create_task(service.run())

        async def received_everything() -> bool:
            assert not run.done(), "ingest stopped early"
            return emu.finished.is_set() and service.stats.frames >= emu.frames_sent

        await eventually_async(received_everything, timeout=120)
        service.stop()
        await run
    return service


def test_recording_lands_in_iceberg_exactly_once(bus_settings: K2Settings, recording_batch: pa.RecordBatch) -> None:
    service = asyncio.run(_ingest(bus_settings))
    assert service.stats.trades == 34_419
    assert service.producer.stats.delivered == 34_419
    assert service.producer.stats.failed == 0

    # Kafka's committed offsets are advisory: set them to the end, the table (empty) still wins.
    topic = topic_name(bus_settings.kafka.asset_class, "trades", "binance")
    ends = high_watermarks(bus_settings, topic)
    _commit_kafka_offsets(bus_settings, topic, ends)
    consumer, registry = build_consumer(bus_settings)
    stats = consumer.run(idle_exit_s=2.0, duration_s=120)
    registry.close()
    assert stats.messages == 34_419
    assert stats.rows_committed == 34_419
    assert stats.dead_lettered == 0
    assert_exactly(bus_settings, recording_batch)

    # The offsets committed with the rows say exactly where each partition ends.
    lake = bus_settings.lake
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    offsets = table_offsets(table, bus_settings.kafka.consumer_group)
    assert offsets == {(topic, p): end for p, end in ends.items() if end > 0}
    assert sum(offsets.values()) == 34_419
    summary = table.current_snapshot().summary.additional_properties  # type: ignore[union-attr]
    assert offsets_property(bus_settings.kafka.consumer_group) in summary

    # A second run finds nothing new to do, even with Kafka's offsets rewound to 0: the table's
    # offsets are where it resumes.
    _commit_kafka_offsets(bus_settings, topic, dict.fromkeys(ends, 0))
    again, registry = build_consumer(bus_settings)
    stats = again.run(idle_exit_s=1.0, duration_s=60)
    registry.close()
    assert stats.messages == 0
    assert_exactly(bus_settings, recording_batch)


def _commit_kafka_offsets(settings: K2Settings, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for the settings' group in Kafka (what a stale or foreign commit would do)."""
    from confluent_kafka import TopicPartition

    client = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.kafka.consumer_group,
            "enable.auto.commit": False,
        }
    )

    def commit() -> bool:
        try:
            client.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:  # NOT_COORDINATOR while the group's coordinator is being set up
            raise AssertionError(str(exc)) from exc
        return True

    try:
        eventually(commit, timeout=30, interval=0.2)
    finally:
        client.close()
