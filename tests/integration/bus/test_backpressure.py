"""A full producer queue pauses the sender (BufferError -> wait -> retry); nothing is dropped."""

from __future__ import annotations

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.metrics import PRODUCER_BACKPRESSURE
from k2.services.consume import build_consumer
from tests.integration.bus.conftest import assert_exactly, produce

pytestmark = pytest.mark.integration


def test_tiny_queue_applies_backpressure_and_delivers_everything(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    settings = bus_settings.model_copy(
        update={"kafka": bus_settings.kafka.model_copy(update={"producer_queue_messages": 50, "linger_ms": 50})}
    )
    topic = f"market.{settings.kafka.asset_class}.trades.binance"
    data = recording_batch.slice(0, 3_000)
    produce(settings, data)  # asserts every message delivered, none failed
    assert PRODUCER_BACKPRESSURE.labels(topic=topic)._value.get() > 0
    consumer, registry = build_consumer(settings)
    consumer.run(idle_exit_s=2.0, duration_s=60)
    registry.close()
    assert_exactly(settings, data)
