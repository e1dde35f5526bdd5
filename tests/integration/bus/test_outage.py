"""Broker outage during ingestion: the producer queues, backs off, recovers; nothing lost or duplicated.

The test runs its own single-node Kafka, because it SIGKILLs it. While the broker is down, `k2
ingest` keeps reading the emulator into the producer's queue. When the broker comes back, the
idempotent producer delivers everything exactly once, and every delivery report is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.devservices.kafka import KafkaCluster
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.metrics import PRODUCER_MESSAGES
from k2.services.consume import build_consumer
from k2.services.ingest import IngestService
from tests.conftest import eventually_async
from tests.integration.bus.conftest import assert_exactly

pytestmark = pytest.mark.integration


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaCluster]:
    # die_with_parent=False: the restart runs in a worker thread, and PR_SET_PDEATHSIG would kill the
    # broker when that thread exits. The fixture stops it.
    cluster = KafkaCluster(tmp_path / "kafka", brokers=1, die_with_parent=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def _ingest_through_outage(settings: K2Settings, cluster: KafkaCluster) -> IngestService:
    async with BinanceEmulator(ReplayConfig(speed=40)) as emu:
        service = IngestService(settings, ws_base_url=emu.url, is_sample_data=True)
        run = asyncio.create_task(service.run())

        async def delivered(n: int) -> bool:
            assert not run.done(), "ingest stopped early"
            service.producer.poll()
            return service.producer.stats.delivered >= n

        await eventually_async(lambda: delivered(2_000), timeout=60)
        await asyncio.to_thread(cluster.kill, 1)
        frames_at_kill = service.stats.frames

        async def still_reading() -> bool:
            assert not run.done(), "ingest stopped during the outage"
            return service.stats.frames >= frames_at_kill + 2_000

        await eventually_async(still_reading, timeout=60)
        queued_during_outage = service.producer.queued
        await asyncio.to_thread(cluster.restart, 1)

        async def received_everything() -> bool:
            assert not run.done(), "ingest stopped early"
            return emu.finished.is_set() and service.stats.frames >= emu.frames_sent

        await eventually_async(received_everything, timeout=120)
        service.stop()
        await run
    assert queued_during_outage > 0
    return service


def test_broker_outage_during_ingest_loses_and_duplicates_nothing(
    bus_settings: K2Settings, own_kafka: KafkaCluster, recording_batch: pa.RecordBatch
) -> None:
    settings = bus_settings.model_copy(
        update={
            "kafka": bus_settings.kafka.model_copy(
                update={"bootstrap_servers": own_kafka.bootstrap_servers, "delivery_timeout_ms": 120_000}
            )
        }
    )
    topic = f"market.{settings.kafka.asset_class}.trades.binance"
    failed_before = PRODUCER_MESSAGES.labels(topic=topic, result="failed")._value.get()
    service = asyncio.run(_ingest_through_outage(settings, own_kafka))
    stats = service.producer.stats
    assert service.stats.trades == 34_419
    assert stats.produced == 34_419
    assert (stats.delivered, stats.failed) == (34_419, 0)
    assert PRODUCER_MESSAGES.labels(topic=topic, result="delivered")._value.get() >= 34_419
    assert PRODUCER_MESSAGES.labels(topic=topic, result="failed")._value.get() == failed_before

    consumer, registry = build_consumer(settings)
    assert consumer.run(idle_exit_s=2.0, duration_s=120).rows_committed == 34_419
    registry.close()
    assert_exactly(settings, recording_batch)
