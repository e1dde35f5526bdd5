"""The canonical quality-event record: sequence gaps, duplicates, reorders, resets and data anomalies.

One row per event (duplicates, reorders and anomalies are aggregated per parsed batch and symbol,
so a burst is one row with ``count``). Gaps change status over time (OPEN -> RESOLVED or
UNRECOVERABLE); Iceberg tables are append-only, so each change is a new row with the same
``event_id`` and a later ``status_at``: the newest row of an ``event_id`` is its current state.
"""

from __future__ import annotations

from enum import StrEnum

from k2.schema.model import EnumType, Field, LongType, RecordSchema, StringType, TimestampType


class EventKind(StrEnum):
    """What was observed (a small fixed set: it is also a metric label)."""

    GAP = "GAP"  # ids missing between two received ids
    DUPLICATE = "DUPLICATE"  # an id already stored or already received: dropped
    OUT_OF_ORDER = "OUT_OF_ORDER"  # an id arriving after a higher one (it filled a hole)
    RESET = "RESET"  # ids jumped far back: the venue restarted its numbering
    NON_POSITIVE = "NON_POSITIVE"  # price or quantity <= 0 (rejected by the parser)
    PRICE_JUMP = "PRICE_JUMP"  # price too far from the rolling reference
    TIMESTAMP_FUTURE = "TIMESTAMP_FUTURE"  # exchange time ahead of receive time
    TIMESTAMP_LAG = "TIMESTAMP_LAG"  # exchange time too far behind receive time
    STALE_FEED = "STALE_FEED"  # no message on an active symbol for too long
    CROSSED_QUOTE = "CROSSED_QUOTE"  # bid >= ask (hook: no quotes yet)


class EventStatus(StrEnum):
    OPEN = "OPEN"  # a gap waiting for (or in) backfill
    RESOLVED = "RESOLVED"  # a gap whose trades were all fetched and written
    UNRECOVERABLE = "UNRECOVERABLE"  # a gap backfill could not close (see detail)
    RECORDED = "RECORDED"  # any other event: nothing to resolve


QUALITY_EVENT_V1 = RecordSchema(
    name="QualityEvent",
    namespace="k2.quality",
    version=1,
    doc="A completeness or data-quality event observed at ingest (schema v1).",
    fields=(
        Field(1, "event_id", StringType(), "Stable id of the event; status updates repeat it."),
        Field(2, "exchange", StringType(), "Venue name, upper case (e.g. BINANCE)."),
        Field(3, "symbol", StringType(), "Exchange symbol, upper case."),
        Field(4, "stream", StringType(), "The venue stream the ids belong to (e.g. trade)."),
        Field(5, "kind", EnumType("EventKind", tuple(k.value for k in EventKind)), "What was observed."),
        Field(6, "first_id", LongType(), "First trade id concerned (inclusive)."),
        Field(7, "last_id", LongType(), "Last trade id concerned (inclusive)."),
        Field(8, "count", LongType(), "Ids missing (gap) or occurrences (other kinds)."),
        Field(9, "trade_time", TimestampType(), "Exchange time of the trade that revealed the event, UTC."),
        Field(10, "detected_at", TimestampType(), "When K2 detected the event, UTC."),
        Field(11, "status", EnumType("EventStatus", tuple(s.value for s in EventStatus)), "Resolution state."),
        Field(12, "status_at", TimestampType(), "When this status was reached, UTC."),
        Field(13, "recovered", LongType(), "Trades written by backfill for this gap (0 otherwise)."),
        Field(14, "detail", StringType(), "Human-readable detail (e.g. why a gap is unrecoverable)."),
    ),
)

QUALITY_EVENT = QUALITY_EVENT_V1
