"""One definition, three derived forms: golden files, field ids, and agreement between the forms."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.types import DecimalType, ListType, MapType, TimestamptzType

from k2.config import LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema import TRADE, TRADE_ARROW_SCHEMA, TRADE_V2, TRADE_V3, to_avro, to_iceberg
from k2.schema.golden import GOLDEN_DIR, golden_files
from k2.schema.kinds import RecordKind, spec
from k2.sources import RawFrame

PROTOTYPE_FIELDS = [
    "message_id", "trade_id", "symbol", "exchange", "asset_class", "timestamp", "price", "quantity",
    "currency", "side", "trade_conditions", "source_sequence", "ingestion_timestamp", "platform_sequence",
    "vendor_data",
]  # fmt: skip


def test_golden_files_match_the_definition() -> None:
    """Fails on drift: regenerate with `make golden` after changing a canonical record on purpose."""
    expected = golden_files()
    on_disk = {p.name: p.read_text() for p in GOLDEN_DIR.iterdir() if p.is_file()}
    assert set(on_disk) == set(expected)
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} drifted from the canonical definition"


def test_trade_v2_has_the_prototype_fields_plus_is_sample_data() -> None:
    assert TRADE_V2.version == 2
    assert list(TRADE_V2.names) == [*PROTOTYPE_FIELDS, "is_sample_data"]
    ids = TRADE_V2.all_ids()
    assert len(ids) == len(set(ids)), "field ids must be unique"


def test_trade_v3_is_v2_plus_the_optional_instrument_with_the_id_iceberg_adds_it_with() -> None:
    assert TRADE is TRADE_V3 and TRADE.version == 3
    assert list(TRADE.names) == [*PROTOTYPE_FIELDS, "is_sample_data", "instrument"]
    added = TRADE.field("instrument")
    assert (added.id, added.required) == (max(TRADE_V2.all_ids()) + 1, False) == (20, False)


def test_iceberg_types_are_real_decimals_lists_maps_and_utc_timestamps() -> None:
    schema = to_iceberg(TRADE)
    assert schema.find_field("price").field_type == DecimalType(38, 12)
    assert schema.find_field("quantity").field_type == DecimalType(38, 12)
    assert schema.find_field("timestamp").field_type == TimestamptzType()
    assert isinstance(schema.find_field("vendor_data").field_type, MapType)
    assert isinstance(schema.find_field("trade_conditions").field_type, ListType)
    assert [f.field_id for f in schema.fields] == [*range(1, 17), 20]


def test_arrow_schema_agrees_with_pyiceberg_derivation(bundled_frames: list[RawFrame]) -> None:
    """pyiceberg derives the same Arrow types from our Iceberg schema (it prefers large_* string offsets)."""
    derived = schema_to_pyarrow(to_iceberg(TRADE))
    assert [f.name for f in derived] == list(TRADE_ARROW_SCHEMA.names)
    assert [f.nullable for f in derived] == [f.nullable for f in TRADE_ARROW_SCHEMA]
    normalise = {"large_string": "string", "large_list": "list"}
    for ours, theirs in zip(TRADE_ARROW_SCHEMA, derived, strict=True):
        text = str(theirs.type)
        for large, small in normalise.items():
            text = text.replace(large, small)
        assert str(ours.type) == text, ours.name
    batch = parse_canonical(
        "binance", bundled_frames[:10], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    table = pa.Table.from_batches([batch.records[RecordKind.TRADES]])
    assert table.cast(derived).cast(TRADE_ARROW_SCHEMA).equals(table)


def test_avro_schema_round_trips_a_parsed_trade_exactly(bundled_frames: list[RawFrame]) -> None:
    avro = fastavro.parse_schema(to_avro(TRADE))
    batch = parse_canonical(
        "binance", bundled_frames[:200], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    rows = batch.records[RecordKind.TRADES].to_pylist()
    for row in rows:
        row["vendor_data"] = dict(row["vendor_data"])
    buf = io.BytesIO()
    fastavro.writer(buf, avro, rows)
    buf.seek(0)
    assert list(fastavro.reader(buf)) == rows


def test_avro_side_is_an_enum_and_decimals_are_bytes() -> None:
    fields = {f["name"]: f for f in to_avro(TRADE)["fields"]}
    assert fields["side"]["type"]["type"] == "enum"
    assert fields["side"]["type"]["symbols"] == ["BUY", "SELL", "UNKNOWN"]
    assert fields["price"]["type"] == {
        "type": "bytes",
        "logicalType": "decimal",
        "precision": 38,
        "scale": 12,
    }
    assert fields["timestamp"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["source_sequence"]["type"] == ["null", "long"]
    json.dumps(to_avro(TRADE))  # JSON-able


def test_arrow_schema_carries_field_ids() -> None:
    for i, f in zip([*range(1, 17), 20], TRADE_ARROW_SCHEMA, strict=True):
        assert f.metadata[b"PARQUET:field_id"] == str(i).encode()
    assert TRADE_ARROW_SCHEMA.field("price").type == pa.decimal128(38, 12)


@pytest.mark.parametrize("kind", list(RecordKind))
def test_a_created_table_has_exactly_the_declared_field_ids(kind: RecordKind, tmp_path: Path) -> None:
    """Iceberg assigns fresh ids on create (top-level first, then nested): the declarations follow that
    order, so Parquet files stamped with the declared ids resolve to the right columns."""
    lake = LakeSettings(warehouse=tmp_path)
    table = load_or_create_table(open_catalog(lake), lake, kind)
    assert table.schema() == to_iceberg(spec(kind).record)
