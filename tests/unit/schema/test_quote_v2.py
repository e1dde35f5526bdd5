"""Quote v2 (sizes optional) is a compatible evolution of v1: Avro readers and Iceberg tables of v1 follow."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import fastavro
import pyarrow as pa

from k2.config import LakeSettings
from k2.lake.catalog import load_or_create_table, open_catalog, partition_spec, sort_order, table_identifier
from k2.lake.writer import TableWriter
from k2.schema import to_arrow, to_avro, to_iceberg
from k2.schema.kinds import RecordKind
from k2.schema.quote import QUOTE, QUOTE_V1, QUOTE_V2

ROW = {
    "message_id": "00000000-0000-5000-8000-000000000000", "symbol": "SKL-USD", "instrument": "SKL/USD",
    "exchange": "COINBASE", "asset_class": "crypto", "timestamp": None, "bid_price": Decimal("0.7901"),
    "bid_size": Decimal("450.0"), "ask_price": Decimal("0.7911"), "ask_size": Decimal("2635.4"), "currency": "USD",
    "source_sequence": 201390042, "ingestion_timestamp": datetime(2021, 4, 17, 16, 43, 37, 129330, tzinfo=UTC),
    "platform_sequence": 1, "vendor_data": {}, "is_sample_data": True,
}  # fmt: skip


def test_v2_differs_from_v1_only_in_the_two_sizes_being_optional() -> None:
    assert QUOTE is QUOTE_V2 and QUOTE_V2.version == 2
    changed = [
        (a.name, a.required, b.required) for a, b in zip(QUOTE_V1.fields, QUOTE_V2.fields, strict=True) if a != b
    ]
    assert changed == [("bid_size", True, False), ("ask_size", True, False)]
    assert [f.id for f in QUOTE_V1.fields] == [f.id for f in QUOTE_V2.fields]


def test_a_v2_reader_reads_v1_data_and_v2_data_with_null_sizes() -> None:
    v1, v2 = fastavro.parse_schema(to_avro(QUOTE_V1)), fastavro.parse_schema(to_avro(QUOTE_V2))
    written = io.BytesIO()
    fastavro.writer(written, v1, [ROW])
    written.seek(0)
    assert list(fastavro.reader(written, reader_schema=v2)) == [ROW]
    sizeless = {**ROW, "bid_size": None, "ask_size": None}
    written = io.BytesIO()
    fastavro.writer(written, v2, [sizeless])
    written.seek(0)
    assert list(fastavro.reader(written)) == [sizeless]


def test_a_quotes_table_created_with_v1_is_relaxed_when_opened_and_takes_null_sizes(tmp_path: Path) -> None:
    lake = LakeSettings(warehouse=tmp_path)
    catalog = open_catalog(lake)
    identifier = table_identifier(lake, RecordKind.QUOTES)
    catalog.create_table(  # the table an older K2 made
        identifier, schema=to_iceberg(QUOTE_V1), partition_spec=partition_spec(RecordKind.QUOTES),
        sort_order=sort_order(RecordKind.QUOTES), properties={"k2.schema-version": "1"},
    )  # fmt: skip
    assert catalog.load_table(identifier).schema().find_field("bid_size").required

    table = load_or_create_table(catalog, lake, RecordKind.QUOTES)
    assert not table.schema().find_field("bid_size").required
    assert not table.schema().find_field("ask_size").required
    assert table.schema().find_field("bid_price").required  # nothing else changed
    assert table.properties["k2.schema-version"] == "2"
    assert load_or_create_table(catalog, lake, RecordKind.QUOTES).metadata.current_schema_id == (
        table.metadata.current_schema_id
    )  # relaxed once

    rows = pa.Table.from_pylist([{**ROW, "bid_size": None, "ask_size": None, "vendor_data": []}], to_arrow(QUOTE))
    writer = TableWriter(catalog, identifier, lake)
    writer.append(rows)
    stored = catalog.load_table(identifier).scan().to_arrow().to_pylist()
    assert [(r["bid_size"], r["ask_size"], r["bid_price"]) for r in stored] == [(None, None, Decimal("0.7901"))]
