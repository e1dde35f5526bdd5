"""Broker outage during ingestion: the producer queues, backs off, recovers; nothing lost or duplicated.

The tests run their own single-node Kafka, because they SIGKILL it. While the broker is down, `k2
ingest` keeps reading the emulator into the producer's queue. When the broker comes back within the
delivery timeout, the idempotent producer delivers everything exactly once, and every delivery
report is counted; when it stays down longer, the failed deliveries become a gap that the running
process backfills.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from k2.bus.topics import trades_topic
from k2.config import K2Settings, QualitySettings
from k2.devservices.kafka import KafkaCluster
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.metrics import PRODUCER_MESSAGES
from k2.services.consume import build_consumer, run_consume
from k2.services.ingest import IngestService
from tests.conftest import eventually_async
from tests.integration.bus.conftest import assert_exactly, high_watermarks
from tests.integration.test_completeness import TOTAL, _assert_exactly_the_recording, _events, _table_rows

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


async def _ingest_through_failed_deliveries(settings: K2Settings, cluster: KafkaCluster) -> IngestService:
    """The broker is down longer than the delivery timeout while frames keep coming: librdkafka gives
    up on what it queued meanwhile. The same process goes on once the broker is back."""
    async with BinanceEmulator(ReplayConfig(speed=40)) as emu:
        source = settings.source.model_copy(update={"rest_url": emu.http_url})
        service = IngestService(
            settings.model_copy(update={"source": source}), ws_base_url=emu.url, is_sample_data=True
        )
        run = asyncio.create_task(service.run())

        async def running(check: bool) -> bool:
            assert not run.done(), "ingest stopped early"
            return check

        await eventually_async(lambda: running(service.producer.stats.delivered >= 2_000), timeout=60)
        await asyncio.to_thread(cluster.kill, 1)
        await eventually_async(lambda: running(service.producer.stats.failed >= 1_000), timeout=60)
        await asyncio.to_thread(cluster.restart, 1)
        tracker = service.completeness.tracker

        async def settled() -> bool:
            stats = service.get_stats()
            return await running(
                emu.finished.is_set()
                and service.stats.frames >= emu.frames_sent
                and stats["backlog_frames"] == 0
                and stats["undelivered"]["waiting"] == 0
                and service.completeness.backfilling == 0
                and not any(tracker.holes(k) for k in tracker.streams())
                and service.producer.queued == service.events_producer.queued == 0
            )

        await eventually_async(settled, timeout=180)
        service.stop()
        await run
    return service


def test_deliveries_failed_in_an_outage_are_reopened_as_a_gap_and_backfilled_by_the_running_ingest(
    bus_settings: K2Settings, own_kafka: KafkaCluster
) -> None:
    """Failed deliveries (broker down past a 3 s delivery timeout) become gaps in the running `k2
    ingest`: those the topic lacks are backfilled over REST and sent again, those it holds ("possibly
    persisted") are not: the topic ends with every trade once, without a restart."""
    settings = bus_settings.model_copy(
        update={
            "kafka": bus_settings.kafka.model_copy(
                update={"bootstrap_servers": own_kafka.bootstrap_servers, "delivery_timeout_ms": 3_000}
            ),
            "source": bus_settings.source.model_copy(update={"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2}),
            "quality": QualitySettings(gap_grace_s=1.0, rest_weight_per_minute=600_000, rest_weight_burst=10_000),
        }
    )
    service = asyncio.run(_ingest_through_failed_deliveries(settings, own_kafka))
    failed = service.producer.stats.failed
    undelivered = service.get_stats()["undelivered"]
    assert failed >= 1_000 and undelivered["reopened"] + undelivered["held_by_topic"] == failed
    assert undelivered["reopened"] == service.stats.backfilled > 0
    topic = trades_topic(settings.kafka.asset_class, "binance")
    assert sum(high_watermarks(settings, topic).values()) == TOTAL  # every trade once in the topic

    run_consume(settings, idle_exit_s=2.0, duration_s=120)
    gaps = [e for e in _events(settings) if e["kind"] == "GAP"]
    by_id: dict[str, list[str]] = {}
    for e in gaps:
        by_id.setdefault(e["event_id"], []).append(e["status"])
    assert by_id and all(statuses == ["OPEN", "RESOLVED"] for statuses in by_id.values()), by_id
    assert {e["detail"] for e in gaps if e["status"] == "OPEN"} == {"delivery to Kafka failed"}
    reopened = {
        (e["symbol"], str(i)) for e in gaps if e["status"] == "RESOLVED" for i in range(e["first_id"], e["last_id"] + 1)
    }
    assert len(reopened) == undelivered["reopened"]
    _assert_exactly_the_recording(_table_rows(settings), reopened)
