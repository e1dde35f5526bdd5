"""`k2 consume`: Kafka -> Iceberg, exactly once (distributed mode, consumer side).

Composition only: topics checked (created when missing), registry client, decoder, the table and its
writer (with the writer's own commit retry off: :class:`~k2.bus.consumer.IcebergConsumer` retries
itself, re-fencing and re-merging offsets on every attempt), then the consumer loop.

One stream per record kind, each its own :class:`IcebergConsumer` with its own group and table,
looked up in :mod:`k2.schema.kinds`: the venues' trades topics (one per venue of ``source.venues``)
into the trades table (group ``kafka.consumer_group``, the main thread), and on threads of their own
their quotes topics into the quotes table (group ``<consumer_group>.quotes``) when ``source.kinds``
has quotes, and their quality-events topics (what `k2 ingest` observed: gaps, duplicates, anomalies) into the
quality-events table (group ``<consumer_group>.quality``; a few messages a minute).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.consumer import ConsumerStats, IcebergConsumer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder
from k2.bus.topics import dlq_topic, kind_topic
from k2.config import K2Settings, LakeSettings
from k2.errors import LakeError
from k2.feed.venues import feed_specs
from k2.lake.catalog import load_or_create_table, open_catalog, table_name
from k2.lake.writer import TableWriter
from k2.logging import get_logger
from k2.metrics import serve_metrics
from k2.schema.kinds import MARKET_KINDS, RecordKind, spec
from k2.services.lifecycle import stop_on_signals
from k2.services.maintain import scheduled_maintenance

log = get_logger(__name__)


def default_topics(settings: K2Settings, kind: RecordKind = RecordKind.TRADES) -> list[str]:
    """The topic of ``kind`` of every configured venue that publishes it (``source.venues``, or
    ``source.venue``; trades, the main stream, and quality events: every venue): one consumer, one
    group and one table per kind, whatever the number of venues."""
    return [
        kind_topic(settings.kafka.asset_class, kind, fs.name)
        for fs in feed_specs(settings.source)
        if kind in (RecordKind.TRADES, RecordKind.QUALITY_EVENTS) or kind in fs.kinds
    ]


_GROUP_SUFFIX = {RecordKind.TRADES: "", RecordKind.QUOTES: ".quotes", RecordKind.QUALITY_EVENTS: ".quality"}


@dataclass(frozen=True)
class _Stream:
    """What one :class:`IcebergConsumer` moves: its group, default topics, and the table it writes."""

    kind: RecordKind
    group: str
    topics: list[str]
    table: str
    create_table: Callable[[Catalog], Table]


def _stream(settings: K2Settings, kind: RecordKind) -> _Stream:
    """The consumer of ``kind``: its own group (``<consumer_group><suffix>``), topic and table."""
    kafka, lake = settings.kafka, settings.lake
    return _Stream(
        kind,
        kafka.consumer_group + _GROUP_SUFFIX[kind],
        default_topics(settings, kind),
        table_name(lake, kind),
        lambda catalog: load_or_create_table(catalog, lake, kind),
    )


def _open_table(lake: LakeSettings, stream: _Stream, attempts: int = 5) -> Catalog:
    """Open the catalog and the stream's table, retried: consumers started together on a fresh SQLite
    catalog race to create its tables and namespace (``already exists`` / ``UNIQUE constraint``
    errors from SQLAlchemy); the loser succeeds on the next try."""
    for attempt in range(1, attempts + 1):
        try:
            catalog = open_catalog(lake)
            stream.create_table(catalog)
            return catalog
        except Exception as exc:
            if attempt == attempts:
                raise LakeError(f"cannot open the {stream.table} table: {exc}") from exc
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def build_consumer(
    settings: K2Settings,
    topics: Sequence[str] | None = None,
    *,
    kind: RecordKind = RecordKind.TRADES,
    client_id: str = "k2-consume",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[IcebergConsumer, SchemaRegistry]:
    """An :class:`IcebergConsumer` of ``kind`` rows from ``topics`` (default: the configured venue's
    topic of that kind) into that kind's table."""
    stream = _stream(settings, kind)
    kafka = settings.kafka.model_copy(update={"consumer_group": stream.group})
    names = list(topics or stream.topics)
    admin = admin_client(kafka.bootstrap_servers)
    for name in names:
        ensure_topics(admin, topic_specs(kafka, name, dlq_topic(name, kafka.dlq_suffix)))
    lake = settings.lake.model_copy(update={"commit_retries": 0})
    catalog = _open_table(lake, stream)
    writer = TableWriter(catalog, (lake.namespace, stream.table), lake)
    registry = SchemaRegistry(kafka.schema_registry_url)
    decoder = AvroDecoder(spec(kind).record, registry.fetch)
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
    """Consume until SIGINT/SIGTERM (a second signal ends the process at once, see
    :func:`~k2.services.lifecycle.stop_on_signals`) or a bound; every consumed message is committed
    exactly once.

    With the default topics the other kinds' streams (quotes when ``source.kinds`` has them, and
    quality events) run alongside on threads of their own (same ``duration_s`` and ``idle_exit_s``;
    stopped when the trades consumer stops). Returns the trades consumer's stats.
    """
    consumer, registry = build_consumer(settings, topics)
    side: list[tuple[IcebergConsumer, SchemaRegistry]] = []
    served = {k for fs in feed_specs(settings.source) for k in fs.kinds}
    others = [k for k in MARKET_KINDS if k in served and k is not RecordKind.TRADES]
    try:
        if topics is None:
            for kind in (*others, RecordKind.QUALITY_EVENTS):
                side.append(build_consumer(settings, kind=kind, client_id=f"k2-consume-{kind.value}"))
        if settings.metrics.port is not None:
            serve_metrics(settings.metrics.port, settings.metrics.host)
    except BaseException:
        consumer.close()
        registry.close()
        raise

    def _stop() -> None:  # called in the signal handler: sets flags only
        consumer.stop()
        for other, _ in side:
            other.stop()

    failures: list[BaseException] = []

    def _run_side(other: IcebergConsumer) -> None:
        try:
            other.run(duration_s=duration_s, idle_exit_s=idle_exit_s)
        except BaseException as exc:  # the process fails with it: stop the trades consumer too
            failures.append(exc)
            consumer.stop()

    finished = False
    kinds = [RecordKind.TRADES, *((*others, RecordKind.QUALITY_EVENTS) if side else ())]
    upkeep = scheduled_maintenance(settings, [table_name(settings.lake, k) for k in kinds])
    with stop_on_signals(_stop) as received:
        threads = [threading.Thread(target=_run_side, args=(other,), daemon=True) for other, _ in side]
        for thread in threads:
            thread.start()
        try:
            with upkeep:  # off the commit path, docs/lake.md
                stats = consumer.run(duration_s=duration_s, idle_exit_s=idle_exit_s, max_messages=max_messages)
            finished = True
        finally:
            for (other, other_registry), thread in zip(side, threads, strict=True):
                if idle_exit_s is None or not finished:  # bounded runs wait for the side stream to go idle too
                    other.stop()
                thread.join()
                other_registry.close()
                log.info("consume.side_stopped", **other.stats.as_dict())
            registry.close()
            if received:
                log.info("consume.stopped_by_signal", signal=received[0].name)
            if failures and not finished:
                log.error("consume.side_failed", error=repr(failures[0]))  # the trades consumer's error is raised
    if failures:
        raise failures[0]
    return stats
