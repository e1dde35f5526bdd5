"""Record kinds as data: one table row per kind says everything the pipeline needs to know about it.

==================  ================  ======================  ========================  ===============
kind                canonical record  Iceberg table (default)  partition / sort order   completeness
==================  ================  ======================  ========================  ===============
``trades``          Trade v3          ``trades``              day(timestamp) /          consecutive ids
                                                              symbol, timestamp
``quotes``          Quote v2          ``quotes``              day(ingestion_timestamp)  increasing ids
                                                              / symbol, ingestion_ts
``quality_events``  QualityEvent v1   ``quality_events``      day(detected_at) /        none
                                                              symbol
==================  ================  ======================  ========================  ===============

Each kind has a Kafka topic per venue, ``market.<asset_class>.<kind>.<venue>`` (``k2.bus.topics``).

Table names are settings (``lake.trades_table``, ``lake.quotes_table``, ``lake.events_table``, in the
``lake.namespace``). Consume, intake, the lake, queries and metrics look a kind up here instead of
branching on it. Adding a kind means declaring its record (``k2.schema``), adding a row here, and a parser in each
venue that serves it. Pure data: no I/O, no pyiceberg objects (``k2.lake.catalog`` builds those).

Every kind has two Arrow forms: the canonical one (:func:`canonical_schema`, what sinks and tables
take) and the *wire form* (:func:`wire_schema`), the same without :data:`PIPELINE_COLUMNS`: what a
venue parser outputs, before the feed drops duplicates and stamps the rest (``k2.feed.stamp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache

import pyarrow as pa

from k2.schema.arrow import to_arrow
from k2.schema.evolution import check_history
from k2.schema.model import RecordSchema
from k2.schema.quality_event import QUALITY_EVENT
from k2.schema.quote import QUOTE_VERSIONS
from k2.schema.trade import TRADE_VERSIONS


class RecordKind(StrEnum):
    """What a record is (a small fixed set: also a metric label)."""

    TRADES = "trades"
    QUOTES = "quotes"
    QUALITY_EVENTS = "quality_events"


class IdPolicy(StrEnum):
    """How the venue's ids of a kind are checked at ingest (see docs/quality.md)."""

    CONSECUTIVE = "consecutive"  # trade ids +1 per trade: gaps, reorders, duplicates, REST backfill
    INCREASING = "increasing"  # update ids only increase: duplicates dropped, backwards flagged, no gaps
    NONE = "none"  # no venue ids (K2's own records)


@dataclass(frozen=True)
class KindSpec:
    """Everything about one record kind."""

    kind: RecordKind
    history: tuple[RecordSchema, ...]  # every version, oldest first (k2.schema.evolution); the last is written
    partition: tuple[str, str, str]  # (source column, transform, partition field name); ``day`` only today
    sort: tuple[str, ...]  # sort order columns, ascending; the writer sorts each file by them
    time_column: str  # the column a time-range query filters on
    topic_part: str  # ``market.<asset_class>.<topic_part>.<venue>``
    ids: IdPolicy

    def __post_init__(self) -> None:
        check_history(self.history)

    @property
    def name(self) -> str:
        return self.kind.value

    @property
    def record(self) -> RecordSchema:
        """The version the pipeline writes today."""
        return self.history[-1]


KINDS: dict[RecordKind, KindSpec] = {
    RecordKind.TRADES: KindSpec(
        kind=RecordKind.TRADES,
        history=TRADE_VERSIONS,
        partition=("timestamp", "day", "timestamp_day"),
        sort=("symbol", "timestamp"),
        time_column="timestamp",
        topic_part="trades",
        ids=IdPolicy.CONSECUTIVE,
    ),
    RecordKind.QUOTES: KindSpec(
        kind=RecordKind.QUOTES,
        history=QUOTE_VERSIONS,
        partition=("ingestion_timestamp", "day", "ingestion_day"),
        sort=("symbol", "ingestion_timestamp"),
        time_column="ingestion_timestamp",
        topic_part="quotes",
        ids=IdPolicy.INCREASING,
    ),
    RecordKind.QUALITY_EVENTS: KindSpec(
        kind=RecordKind.QUALITY_EVENTS,
        history=(QUALITY_EVENT,),
        partition=("detected_at", "day", "detected_day"),
        sort=("symbol",),
        time_column="detected_at",
        topic_part="quality_events",
        ids=IdPolicy.NONE,
    ),
}

MARKET_KINDS: tuple[RecordKind, ...] = (RecordKind.TRADES, RecordKind.QUOTES)
"""Kinds a venue publishes (quality events are K2's own)."""


def spec(kind: RecordKind | str) -> KindSpec:
    """The spec of ``kind`` (a :class:`RecordKind` or its value)."""
    try:
        return KINDS[RecordKind(kind)]
    except ValueError:
        raise KeyError(f"unknown record kind {kind!r}; known: {', '.join(k.value for k in RecordKind)}") from None


PIPELINE_COLUMNS = ("platform_sequence", "is_sample_data", "instrument")
"""Columns K2 stamps after deduplication (:func:`k2.feed.stamp.stamp`); parsers never set them. The
canonical ``instrument`` comes from the venue's symbol rules, which the feed holds."""


@cache
def canonical_schema(kind: RecordKind) -> pa.Schema:
    """The Arrow schema of ``kind``'s canonical record."""
    return to_arrow(KINDS[kind].record)


@cache
def wire_schema(kind: RecordKind) -> pa.Schema:
    """``kind``'s canonical Arrow schema without the pipeline columns: what a venue parser outputs."""
    schema = canonical_schema(kind)
    for name in PIPELINE_COLUMNS:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    return schema
