"""decimal(38, 12) round-trips the extreme values the supported venues send, through every form.

Extremes (formats as the venues publish them):
- Binance spot: every price/quantity string has 8 decimals; the smallest tick is 0.00000001 (e.g. BTC-quoted
  pairs), quantities of meme coins reach tens of billions (e.g. "91157243281.00000000"), BTCUSDT traded above
  126,000 in 2025 ("126199.63000000").
- Coinbase Advanced Trade / Exchange: prices and sizes with up to 10 decimals ("0.0000004321", recorded
  matches in ../shared/data use up to 9).
- Kraken v1: prices/volumes with up to 10 decimals ("0.0000012345").
"""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import duckdb
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2.config import LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema import TRADE, to_avro
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame

EXTREMES = [
    ("0.00000001", "91157243281.00000000"),
    ("126199.63000000", "0.00000001"),
    ("0.0000004321", "0.0000000001"),
    ("0.0000012345", "12345678901234.1234567890"),
    ("99999999999999999999999999.999999999999", "1"),  # the largest decimal(38,12) value
]


def _frames() -> list[RawFrame]:
    out = []
    for i, (p, q) in enumerate(EXTREMES):
        payload = (
            f'{{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":{i},"p":"{p}","q":"{q}",'
            f'"T":1723161255342,"m":false,"M":true}}'
        )
        out.append(RawFrame(payload.encode(), 1_723_161_256_000_000))
    return out


def test_extremes_parse_exactly() -> None:
    batch = parse_canonical(
        "binance", _frames(), symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False
    ).records[RecordKind.TRADES]
    got = [(r["price"], r["quantity"]) for r in batch.to_pylist()]
    assert got == [(Decimal(p), Decimal(q)) for p, q in EXTREMES]


def test_extremes_round_trip_through_avro() -> None:
    batch = parse_canonical(
        "binance", _frames(), symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False
    ).records[RecordKind.TRADES]
    rows = batch.to_pylist()
    for row in rows:
        row["vendor_data"] = dict(row["vendor_data"])
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(to_avro(TRADE)), rows)
    buf.seek(0)
    assert [(r["price"], r["quantity"]) for r in fastavro.reader(buf)] == [
        (Decimal(p), Decimal(q)) for p, q in EXTREMES
    ]


def test_extremes_round_trip_through_iceberg_and_duckdb(tmp_path: Path) -> None:
    lake = LakeSettings(warehouse=tmp_path)
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    batch = parse_canonical(
        "binance", _frames(), symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False
    ).records[RecordKind.TRADES]
    table.append(pa.Table.from_batches([batch]))
    files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
    assert all(pq.read_schema(f).field("price").type == pa.decimal128(38, 12) for f in files)
    con = duckdb.connect()
    rows = con.execute(
        "SELECT price, quantity, vendor_data['is_buyer_maker'] FROM read_parquet(?) ORDER BY source_sequence",
        [files],
    ).fetchall()
    assert rows == [(Decimal(p), Decimal(q), "false") for p, q in EXTREMES]


@pytest.mark.parametrize("value", ["1.0000000000001", "100000000000000000000000000"])
def test_values_beyond_the_column_are_rejected_not_rounded(value: str) -> None:
    payload = f'{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"{value}","q":"1","T":1,"m":false}}'.encode()
    parsed = parse_canonical(
        "binance", [RawFrame(payload, 1)], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False
    )
    assert [r.reason.value for r in parsed.rejected] == ["invalid_number"]
