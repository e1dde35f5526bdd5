"""Quality events as canonical rows (schema :data:`k2.schema.quality_event.QUALITY_EVENT`). Pure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from k2.quality.checks import Anomaly
from k2.quality.sequence import Gap, SequenceEvent, StreamKey
from k2.schema import to_arrow
from k2.schema.quality_event import QUALITY_EVENT, EventKind, EventStatus

QUALITY_EVENT_ARROW_SCHEMA = to_arrow(QUALITY_EVENT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_NAMESPACE = uuid.UUID("7c1b9e0a-3f4d-5e2a-8b6c-0d9e8f7a6b5c")


@dataclass(frozen=True, slots=True)
class QualityEventRow:
    event_id: str
    exchange: str
    symbol: str
    stream: str
    kind: EventKind
    first_id: int
    last_id: int
    count: int
    trade_time_us: int
    detected_at_us: int
    status: EventStatus
    status_at_us: int
    recovered: int = 0
    detail: str = ""


def _event_id(key: StreamKey, kind: EventKind, first_id: int, last_id: int, detected_at_us: int) -> str:
    text = f"{key.exchange}:{key.symbol}:{key.stream}:{kind}:{first_id}:{last_id}:{detected_at_us}"
    return str(uuid.uuid5(_EVENT_NAMESPACE, text))


def gap_row(gap: Gap, status: EventStatus, status_at_us: int, recovered: int = 0, detail: str = "") -> QualityEventRow:
    """A gap's row in a given status (the same ``event_id`` for every status of one gap)."""
    k = gap.key
    return QualityEventRow(
        gap.gap_id, k.exchange, k.symbol, k.stream, EventKind.GAP, gap.first_id, gap.last_id, gap.count,
        gap.trade_time_us, gap.detected_at_us, status, status_at_us, recovered, detail,
    )  # fmt: skip


def sequence_row(event: SequenceEvent) -> QualityEventRow:
    k = event.key
    return QualityEventRow(
        _event_id(k, event.kind, event.first_id, event.last_id, event.detected_at_us),
        k.exchange, k.symbol, k.stream, event.kind, event.first_id, event.last_id, event.count,
        event.trade_time_us, event.detected_at_us, EventStatus.RECORDED, event.detected_at_us,
    )  # fmt: skip


def anomaly_row(anomaly: Anomaly, exchange: str, detected_at_us: int, stream: str = "trade") -> QualityEventRow:
    key = StreamKey(exchange, anomaly.symbol, stream)
    return QualityEventRow(
        _event_id(key, anomaly.kind, anomaly.first_id, anomaly.last_id, detected_at_us),
        exchange, anomaly.symbol, stream, anomaly.kind, anomaly.first_id, anomaly.last_id, anomaly.count,
        anomaly.trade_time_us, detected_at_us, EventStatus.RECORDED, detected_at_us, 0, anomaly.detail,
    )  # fmt: skip


def events_batch(rows: Sequence[QualityEventRow]) -> pa.RecordBatch:
    """One Arrow batch with the canonical quality-event schema."""
    ts = pa.timestamp("us", tz="UTC")
    columns = {
        "event_id": pa.array([r.event_id for r in rows], pa.string()),
        "exchange": pa.array([r.exchange for r in rows], pa.string()),
        "symbol": pa.array([r.symbol for r in rows], pa.string()),
        "stream": pa.array([r.stream for r in rows], pa.string()),
        "kind": pa.array([r.kind.value for r in rows], pa.string()),
        "first_id": pa.array([r.first_id for r in rows], pa.int64()),
        "last_id": pa.array([r.last_id for r in rows], pa.int64()),
        "count": pa.array([r.count for r in rows], pa.int64()),
        "trade_time": pa.array([r.trade_time_us for r in rows], pa.int64()).cast(ts),
        "detected_at": pa.array([r.detected_at_us for r in rows], pa.int64()).cast(ts),
        "status": pa.array([r.status.value for r in rows], pa.string()),
        "status_at": pa.array([r.status_at_us for r in rows], pa.int64()).cast(ts),
        "recovered": pa.array([r.recovered for r in rows], pa.int64()),
        "detail": pa.array([r.detail for r in rows], pa.string()),
    }
    return pa.RecordBatch.from_arrays(
        [columns[f.name].cast(f.type) for f in QUALITY_EVENT_ARROW_SCHEMA], schema=QUALITY_EVENT_ARROW_SCHEMA
    )


def open_gaps(events: pa.Table) -> list[Gap]:
    """The gaps whose newest row in ``events`` (quality-event rows) is OPEN: recorded but never
    resolved, e.g. because the process stopped before backfill finished or before its RESOLVED row
    was stored. On a tie of ``status_at`` a final status wins, as in the quality report."""
    final = (EventStatus.RESOLVED.value, EventStatus.UNRECOVERABLE.value)
    latest: dict[str, dict[str, object]] = {}
    for row in events.to_pylist():
        if row["kind"] != EventKind.GAP.value:
            continue
        rank = (row["status_at"], row["status"] in final)
        held = latest.get(row["event_id"])
        if held is None or rank > held["_rank"]:  # type: ignore[operator]
            latest[row["event_id"]] = {**row, "_rank": rank}
    out = []
    for event_id, row in latest.items():
        if row["status"] != EventStatus.OPEN.value:
            continue
        key = StreamKey(str(row["exchange"]), str(row["symbol"]), str(row["stream"]))
        out.append(
            Gap(
                key, int(row["first_id"]), int(row["last_id"]),  # type: ignore[call-overload]
                _us(row["detected_at"]), _us(row["trade_time"]), event_id,
            )
        )  # fmt: skip
    return out


def _us(value: object) -> int:
    """Microseconds since the epoch of a timestamp value read from Arrow (a datetime)."""
    assert isinstance(value, datetime)
    return (value - _EPOCH) // timedelta(microseconds=1)
