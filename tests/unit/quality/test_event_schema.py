"""The canonical quality-event record and its derived forms agree (field ids, types, nullability)."""

from __future__ import annotations

import pyarrow as pa

from k2.quality.records import QUALITY_EVENT_ARROW_SCHEMA, QualityEventRow, events_batch
from k2.schema import to_avro, to_iceberg
from k2.schema.quality_event import QUALITY_EVENT, EventKind, EventStatus


def test_derived_forms_share_names_and_field_ids() -> None:
    ids = QUALITY_EVENT.all_ids()
    assert len(ids) == len(set(ids)) == 14
    iceberg = to_iceberg(QUALITY_EVENT)
    assert [(f.field_id, f.name, f.required) for f in iceberg.fields] == [
        (f.id, f.name, True) for f in QUALITY_EVENT.fields
    ]
    assert [f.metadata[b"PARQUET:field_id"] for f in QUALITY_EVENT_ARROW_SCHEMA] == [str(i).encode() for i in ids]
    avro = to_avro(QUALITY_EVENT)
    kind = next(f for f in avro["fields"] if f["name"] == "kind")
    assert kind["type"]["symbols"] == [k.value for k in EventKind]
    assert iceberg.as_arrow().field("trade_time").type == pa.timestamp("us", tz="UTC")


def test_events_batch_round_trips_a_row() -> None:
    row = QualityEventRow(
        "e1", "BINANCE", "BTCUSDT", "trade", EventKind.GAP, 10, 12, 3, 1_000, 2_000, EventStatus.OPEN, 2_000, 0, ""
    )
    batch = events_batch([row])
    assert batch.schema == QUALITY_EVENT_ARROW_SCHEMA
    got = batch.to_pylist()[0]
    assert {k: v for k, v in got.items() if not k.endswith(("_time", "_at"))} == {
        "event_id": "e1", "exchange": "BINANCE", "symbol": "BTCUSDT", "stream": "trade", "kind": "GAP",
        "first_id": 10, "last_id": 12, "count": 3, "status": "OPEN", "recovered": 0, "detail": "",
    }  # fmt: skip
    assert got["trade_time"].timestamp() == 0.001 and got["detected_at"].timestamp() == 0.002
