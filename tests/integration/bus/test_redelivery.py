"""Failed deliveries, decided against the real broker: the ones the topic holds after all ("possibly
persisted": written, acknowledgement lost) are left alone, the others become gaps to backfill.

The outage test (test_outage.py) produces real failures, which a single broker killed outright never
persists; here the "possibly persisted" case is made deterministic: 600 of 1,000 trades are in the
topic, and all 1,000 are reported as failed deliveries.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import pytest

from k2.bus.producer import FailedDelivery
from k2.bus.redelivery import Redelivery
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroEncoder
from k2.bus.topics import value_subject
from k2.config import K2Settings
from k2.feed.trades import TradeCompleteness as Completeness
from k2.quality.sequence import HoleState, StreamKey
from k2.schema import TRADE
from k2.schema.quality_event import EventKind, EventStatus
from k2.sources.session import wall_clock_us
from tests.conftest import eventually_async
from tests.integration.bus.conftest import produce

pytestmark = pytest.mark.integration


def test_failed_deliveries_the_topic_holds_are_not_reopened(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    batch = recording_batch.slice(0, 1_000)
    topic = produce(bus_settings, batch.slice(0, 600))  # these reached the topic despite the failure reports
    registry = SchemaRegistry(bus_settings.kafka.schema_registry_url)
    schema_id = registry.register(value_subject(topic), TRADE)
    registry.close()
    completeness = Completeness(
        bus_settings, exchange="BINANCE", venue="binance", is_sample_data=True, now_us=wall_clock_us(), seed={}
    )
    assert completeness.ingest(batch, wall_clock_us()).num_rows == 1_000  # accepted: handed to the producer
    redelivery = Redelivery(bus_settings.kafka, topic, schema_id, completeness)
    now_ms = time.time_ns() // 10**6
    failed = [FailedDelivery(v, 0, now_ms) for v in AvroEncoder(schema_id, TRADE).encode(batch)]

    async def decide() -> None:
        redelivery.step(failed, settled=False, now_us=wall_clock_us())
        assert redelivery.waiting == 1_000  # not settled: a failed message could still be persisted

        async def decided() -> bool:
            redelivery.step([], settled=True, now_us=wall_clock_us())
            return redelivery.waiting == 0

        await eventually_async(decided, timeout=30)

    asyncio.run(decide())
    assert (redelivery.persisted, redelivery.reopened) == (600, 400)
    symbols = batch.column("symbol").to_pylist()
    ids = batch.column("source_sequence").to_numpy()
    events = [e for e in completeness.take_events() if e.kind is EventKind.GAP]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        lost = ids[600:][np.array(symbols[600:]) == symbol]
        assert lost.size and np.array_equal(lost, np.arange(lost[0], lost[-1] + 1))  # consecutive in the recording
        want = (int(lost[0]), int(lost[-1]))
        holes = completeness.tracker.holes(StreamKey("BINANCE", symbol))
        assert holes == [(*want, HoleState.CONFIRMED)]
        (event,) = [e for e in events if e.symbol == symbol]
        assert (event.first_id, event.last_id, event.status, event.detail) == (
            *want,
            EventStatus.OPEN,
            "delivery to Kafka failed",
        )
    assert completeness.backfilling == 2  # both gaps queued for backfill
