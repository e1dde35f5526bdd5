"""`k2 consume`: Kafka -> Iceberg, exactly once (distributed mode, consumer side).

Composition only: topics checked (created when missing), registry client, decoder, the trades
table and its writer (with the writer's own commit retry off: :class:`~k2.bus.consumer.IcebergConsumer`
retries itself, re-fencing and re-merging offsets on every attempt), then the consumer loop.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from pyiceberg.catalog import Catalog

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.consumer import ConsumerStats, IcebergConsumer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import TradeDecoder
from k2.bus.topics import dlq_topic, topic_name
from k2.config import K2Settings, LakeSettings
from k2.errors import LakeError
from k2.lake.catalog import load_or_create_trades_table, open_catalog
from k2.lake.writer import TableWriter
from k2.logging import get_logger
from k2.metrics import serve_metrics
from k2.schema import TRADE
from k2.sources import DataType

log = get_logger(__name__)


def default_topics(settings: K2Settings) -> list[str]:
    """The trades topic of the configured venue."""
    return [topic_name(settings.kafka.asset_class, DataType.TRADES.value, settings.source.venue)]


def _open_table(lake: LakeSettings, attempts: int = 5) -> Catalog:
    """Open the catalog and the trades table, retried: consumers started together on a fresh SQLite
    catalog race to create its tables and namespace (``already exists`` / ``UNIQUE constraint``
    errors from SQLAlchemy); the loser succeeds on the next try."""
    for attempt in range(1, attempts + 1):
        try:
            catalog = open_catalog(lake)
            load_or_create_trades_table(catalog, lake)
            return catalog
        except Exception as exc:
            if attempt == attempts:
                raise LakeError(f"cannot open the trades table: {exc}") from exc
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def build_consumer(
    settings: K2Settings,
    topics: Sequence[str] | None = None,
    *,
    client_id: str = "k2-consume",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[IcebergConsumer, SchemaRegistry]:
    """An :class:`IcebergConsumer` for ``topics`` (default: the configured venue's trades topic)."""
    kafka = settings.kafka
    names = list(topics or default_topics(settings))
    admin = admin_client(kafka.bootstrap_servers)
    for name in names:
        ensure_topics(admin, topic_specs(kafka, name, dlq_topic(name, kafka.dlq_suffix)))
    lake = settings.lake.model_copy(update={"commit_retries": 0})
    catalog = _open_table(lake)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    registry = SchemaRegistry(kafka.schema_registry_url)
    decoder = TradeDecoder(TRADE, registry.fetch)
    consumer = IcebergConsumer(
        kafka,
        names,
        decoder,
        writer,
        flush_rows=lake.flush_rows,
        flush_seconds=lake.flush_seconds,
        client_id=client_id,
        overrides=overrides,
    )
    return consumer, registry


def run_consume(
    settings: K2Settings,
    *,
    topics: Sequence[str] | None = None,
    duration_s: float | None = None,
    idle_exit_s: float | None = None,
    max_messages: int | None = None,
) -> ConsumerStats:
    """Consume until SIGINT/SIGTERM (or a bound); every consumed message is committed exactly once."""
    consumer, registry = build_consumer(settings, topics)
    if settings.metrics.port is not None:
        serve_metrics(settings.metrics.port, settings.metrics.host)

    def _stop(signum: int, frame: FrameType | None) -> None:
        consumer.stop()

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        return consumer.run(duration_s=duration_s, idle_exit_s=idle_exit_s, max_messages=max_messages)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        registry.close()
