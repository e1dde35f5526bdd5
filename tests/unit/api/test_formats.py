"""Content negotiation and the streaming encoders (exact decimals in every format)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2.api.formats import Format, JsonEncoder, NotAcceptable, encoder, negotiate

TABLE = pa.table(
    {
        "price": pa.array([Decimal("61837.630000000001"), None], pa.decimal128(38, 12)),
        "at": pa.array([datetime(2024, 8, 8, 23, 54, 15, 342001, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")),
        "tags": pa.array([[("a", "b")], []], pa.map_(pa.string(), pa.string())),
        "text": ['say "hi"\n', None],
    }
)


@pytest.mark.parametrize(
    ("fmt", "accept", "want"),
    [
        (Format.CSV, "application/json", Format.CSV),
        (None, None, Format.JSON),
        (None, "*/*", Format.JSON),
        (None, "text/csv", Format.CSV),
        (None, "application/vnd.apache.parquet;q=0.4, application/vnd.apache.arrow.stream;q=0.9", Format.ARROW),
        (None, "text/html, application/*;q=0.2", Format.JSON),
        (None, "application/x-parquet", Format.PARQUET),
    ],
)
def test_negotiation(fmt: Format | None, accept: str | None, want: Format) -> None:
    assert negotiate(fmt, accept) is want


def test_negotiation_refuses_only_types_it_cannot_make() -> None:
    with pytest.raises(NotAcceptable):
        negotiate(None, "text/html, image/png")
    with pytest.raises(NotAcceptable):
        negotiate(None, "text/csv;q=0")


def _encode(fmt: Format, batches: list[pa.RecordBatch]) -> bytes:
    enc = encoder(fmt)
    return enc.start(TABLE.schema) + b"".join(enc.write(b) for b in batches) + enc.finish({})


def test_json_keeps_decimals_exact_as_strings_across_batches() -> None:
    body = json.loads(_encode(Format.JSON, TABLE.to_batches(max_chunksize=1)))
    assert body == {
        "data": [
            {
                "price": "61837.630000000001",
                "at": "2024-08-08T23:54:15.342001Z",
                "tags": {"a": "b"},
                "text": 'say "hi"\n',
            },
            {"price": None, "at": None, "tags": {}, "text": None},
        ]
    }


def test_json_envelope_head_and_trailer() -> None:
    enc = JsonEncoder(head={"columns": ["x"]}, key="rows", arrays=True)
    out = enc.start(TABLE.schema) + enc.finish({"row_count": 0, "truncated": False})
    assert json.loads(out) == {"columns": ["x"], "rows": [], "row_count": 0, "truncated": False}


def test_binary_formats_round_trip_exactly() -> None:
    arrow = pa.ipc.open_stream(_encode(Format.ARROW, TABLE.to_batches())).read_all()
    parquet = pq.read_table(io.BytesIO(_encode(Format.PARQUET, TABLE.to_batches(max_chunksize=1))))
    assert arrow.equals(TABLE) and parquet.equals(TABLE)


def test_csv_writes_exact_values_and_nested_ones_as_json() -> None:
    text = _encode(Format.CSV, TABLE.to_batches()).decode()
    assert text.splitlines()[:2] == [
        '"price","at","tags","text"',
        '61837.630000000001,2024-08-08 23:54:15.342001Z,"{""a"":""b""}","say ""hi""',
    ]
