"""Serde: exact Confluent wire bytes, exact round trips of real trades, schema-id cache, bad input."""

from __future__ import annotations

import io
import json
from decimal import Decimal, localcontext
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2.bus.serde import AvroDecoder, AvroEncoder, WireFormatError, decimal_array, frame, unframe
from k2.feed.stamp import parse_canonical
from k2.schema import TRADE, TRADE_ARROW_SCHEMA, TRADE_V2, TRADE_V3, to_arrow, to_avro
from k2.schema.kinds import RecordKind
from k2.schema.model import DecimalType, Field, RecordSchema
from k2.sources import RawFrame

SCHEMA_ID = 42


@pytest.fixture(scope="module")
def trades(bundled_frames: list[RawFrame]) -> pa.RecordBatch:
    parsed = parse_canonical(
        "binance", bundled_frames[:3_000], symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    return parsed.records[RecordKind.TRADES]


def _reference_body(row: dict[str, Any]) -> bytes:
    """fastavro's own encoding of one row with the full (logical-type) schema: the reference."""
    row = {**row, "vendor_data": dict(row["vendor_data"])}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(to_avro(TRADE)), row)
    return buf.getvalue()


def _registry(*records: Any) -> tuple[dict[int, dict[str, Any]], list[int]]:
    schemas = {SCHEMA_ID + i: to_avro(r) for i, r in enumerate(records)}
    return schemas, []


def _decoder(schemas: dict[int, dict[str, Any]], calls: list[int], record: Any = TRADE) -> AvroDecoder:
    def fetch(schema_id: int) -> dict[str, Any]:
        calls.append(schema_id)
        return schemas[schema_id]

    return AvroDecoder(record, fetch)


def test_frame_is_magic_byte_then_big_endian_schema_id() -> None:
    assert frame(7, b"\x02\x04") == b"\x00\x00\x00\x00\x07\x02\x04"
    assert frame(0x01020304, b"") == b"\x00\x01\x02\x03\x04"
    assert unframe(b"\x00\x00\x00\x01\x00body") == (256, b"body")


def test_encoded_values_are_header_plus_fastavro_reference_body(trades: pa.RecordBatch) -> None:
    values = AvroEncoder(SCHEMA_ID, TRADE).encode(trades)
    rows = trades.to_pylist()
    assert len(values) == trades.num_rows == 3_000
    for value, row in zip(values[:200], rows[:200], strict=True):
        assert value[:5] == b"\x00\x00\x00\x00\x2a"
        assert value[5:] == _reference_body(row)
    first = fastavro.schemaless_reader(io.BytesIO(values[0][5:]), fastavro.parse_schema(to_avro(TRADE)), None)
    assert first["trade_id"] == "3735683259"
    assert first["price"] == Decimal("61837.630000000000")
    assert first["quantity"] == Decimal("0.020000000000")
    assert first["side"] == "SELL"
    assert first["timestamp"].isoformat() == "2024-08-08T23:54:15.342000+00:00"
    assert first["vendor_data"]["event_time"] == "1723161255343"


def test_round_trip_of_real_trades_is_exact(trades: pa.RecordBatch) -> None:
    schemas, calls = _registry(TRADE)
    values = AvroEncoder(SCHEMA_ID, TRADE).encode(trades)
    result = _decoder(schemas, calls).decode(values)
    assert result.errors == []
    assert result.indices == list(range(trades.num_rows))
    assert result.batch.schema == TRADE_ARROW_SCHEMA
    assert result.batch.equals(trades)
    assert result.batch.to_pylist() == trades.to_pylist()


EXTREMES = [
    "0",
    "0.000000000001",
    "-0.000000000001",
    "61837.63",
    "99999999999999999999999999.999999999999",
    "-99999999999999999999999999.999999999999",
    "9223372.036854775807",  # 2**63 - 1 unscaled
    "9223372.036854775808",  # 2**63 unscaled: needs the wide path
    "-9223372.036854775808",
]


def _decimal_record(scale: int) -> RecordSchema:
    return RecordSchema(
        "Amounts", "k2.test", 1, "decimals only",
        (Field(1, "a", DecimalType(38, scale), "required"), Field(2, "b", DecimalType(38, scale), "optional", False)),
    )  # fmt: skip


@pytest.mark.parametrize("text", EXTREMES)
def test_decimals_survive_exactly(text: str) -> None:
    """K2's bodies read back exactly with fastavro (logical schema) and K2's decoder, nulls too; and K2
    decodes fastavro's own bodies (not always minimal: -2**63 takes 9 bytes there, 8 here) exactly."""
    with localcontext() as ctx:
        ctx.prec = 50
        value = Decimal(text).quantize(Decimal("1e-12"))
        negated = -value
    record = _decimal_record(12)
    rows = [{"a": value, "b": value}, {"a": value, "b": None}, {"a": negated, "b": negated}]
    batch = pa.RecordBatch.from_pylist(rows, schema=to_arrow(record))
    values = AvroEncoder(SCHEMA_ID, record).encode(batch)
    reference = fastavro.parse_schema(to_avro(record))
    assert [fastavro.schemaless_reader(io.BytesIO(v[5:]), reference, None) for v in values] == rows
    theirs = []
    for row in rows:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, reference, row)
        theirs.append(frame(SCHEMA_ID, buf.getvalue()))
    decoder = AvroDecoder(record, lambda _id: to_avro(record))
    for encoded in (values, theirs):
        back = decoder.decode(encoded)
        assert back.errors == []
        assert back.batch.to_pylist() == rows


def test_avro_decimal_bytes_are_minimal_twos_complement() -> None:
    """What Java's ``BigInteger.toByteArray`` produces: the shortest two's complement, big-endian."""
    expected = {
        0: b"\x00", 127: b"\x7f", 128: b"\x00\x80", -1: b"\xff", -128: b"\x80", -129: b"\xff\x7f",
        2**63 - 1: b"\x7f" + b"\xff" * 7, 2**63: b"\x00\x80" + b"\x00" * 7, -(2**63): b"\x80" + b"\x00" * 7,
    }  # fmt: skip
    record = _decimal_record(0)
    rows = [{"a": Decimal(v), "b": None} for v in expected]
    values = AvroEncoder(SCHEMA_ID, record).encode(pa.RecordBatch.from_pylist(rows, schema=to_arrow(record)))
    for value, unscaled in zip(values, expected, strict=True):
        body = io.BytesIO(value[5:])
        assert fastavro.schemaless_reader(body, {"type": "long"}, None) == len(expected[unscaled])  # the length
        assert body.read() == expected[unscaled] + b"\x00"  # then the bytes, then b's null branch


def test_decimal_beyond_the_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="precision 38"):
        decimal_array([(10**38).to_bytes(17, "big", signed=True)], 38, 12)


def test_writer_schema_is_fetched_once_per_id(trades: pa.RecordBatch) -> None:
    schemas, calls = _registry(TRADE, TRADE)
    a = AvroEncoder(SCHEMA_ID, TRADE).encode(trades.slice(0, 10))
    b = AvroEncoder(SCHEMA_ID + 1, TRADE).encode(trades.slice(10, 10))
    decoder = _decoder(schemas, calls)
    for _ in range(3):
        assert decoder.decode(a + b).batch.num_rows == 20
    assert calls == [SCHEMA_ID, SCHEMA_ID + 1]
    assert decoder.fetches == 2


def test_bad_messages_are_reported_and_the_good_ones_decoded(trades: pa.RecordBatch) -> None:
    schemas, calls = _registry(TRADE)
    good = AvroEncoder(SCHEMA_ID, TRADE).encode(trades.slice(0, 4))
    values: list[bytes | None] = [
        good[0],
        b"\x01" + good[1][1:],  # wrong magic byte
        good[1],
        frame(999, good[2][5:]),  # unknown schema id
        good[2][:-3],  # truncated
        None,  # tombstone
        good[2] + b"\x00",  # trailing garbage
        good[3],
    ]
    result = _decoder(schemas, calls).decode(values)
    assert result.indices == [0, 2, 7]
    assert result.batch.to_pylist() == [trades.slice(i, 1).to_pylist()[0] for i in (0, 1, 3)]
    assert [(i, e.reason) for i, e in result.errors] == [
        (1, "not_framed"),
        (3, "unknown_schema"),
        (4, "undecodable"),
        (5, "not_framed"),
        (6, "undecodable"),
    ]
    assert "magic byte 1" in str(result.errors[0][1])


def test_out_of_range_decimal_goes_to_errors_not_the_batch(trades: pa.RecordBatch) -> None:
    row = {**trades.slice(0, 1).to_pylist()[0]}
    row["vendor_data"] = dict(row["vendor_data"])
    raw = to_avro(TRADE)
    for f in raw["fields"]:
        if f["name"] == "price":
            f["type"] = {"type": "bytes", "logicalType": "decimal", "precision": 39, "scale": 12}
    row["price"] = Decimal("999999999999999999999999999.000000000000")  # 27 integer digits: 39 total
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw), row)
    bad = frame(SCHEMA_ID, buf.getvalue())
    good = AvroEncoder(SCHEMA_ID, TRADE).encode(trades.slice(0, 2))
    result = _decoder({SCHEMA_ID: to_avro(TRADE)}, []).decode([good[0], bad, good[1]])
    assert result.indices == [0, 2]
    assert [(i, e.reason) for i, e in result.errors] == [(1, "invalid_value")]


def test_v3_reader_decodes_v2_messages_and_v2_reader_decodes_v3(trades: pa.RecordBatch) -> None:
    """The upgrade's consumer (v3) reads the messages an older `k2 ingest` sent (v2: instrument null), and a
    consumer not upgraded yet (v2) reads v3 messages (the instrument is skipped): both directions resolve."""
    schemas = {1: to_avro(TRADE_V2), 2: to_avro(TRADE_V3)}
    v2_values = AvroEncoder(1, TRADE_V2).encode(_as_v2(trades.slice(0, 5)))
    v3_values = AvroEncoder(2, TRADE_V3).encode(trades.slice(5, 5))

    v3_reader = _decoder(schemas, [], TRADE_V3)
    back = v3_reader.decode(v2_values + v3_values)
    assert back.errors == []
    rows = back.batch.to_pylist()
    expected = trades.slice(0, 10).to_pylist()
    assert [r["instrument"] for r in rows] == [None] * 5 + [r["instrument"] for r in expected[5:]]
    assert {r["instrument"] for r in expected[5:]} <= {"BTC/USDT", "ETH/USDT"}  # stamped by the feed
    assert [{k: v for k, v in r.items() if k != "instrument"} for r in rows] == [
        {k: v for k, v in r.items() if k != "instrument"} for r in expected
    ]

    v2_reader = _decoder(schemas, [], TRADE_V2)
    old = v2_reader.decode(v2_values + v3_values)
    assert old.errors == []
    assert old.batch.to_pylist() == _as_v2(trades.slice(0, 10)).to_pylist()


def _as_v2(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A v3 batch as a K2 before v3 produced it (no instrument column)."""
    schema = to_arrow(TRADE_V2)
    return pa.RecordBatch.from_arrays([batch.column(f.name) for f in schema], schema=schema)


def test_golden_v3_only_adds_an_optional_field() -> None:
    v2, v3 = to_avro(TRADE_V2), to_avro(TRADE_V3)
    assert v3["fields"][:-1] == v2["fields"]
    assert v3["fields"][-1]["name"] == "instrument"
    assert v3["fields"][-1]["type"] == ["null", "string"]
    assert v3["fields"][-1]["default"] is None
    assert v3["fields"][-1]["field-id"] == 20
    assert json.dumps(v3).count("field-id") == json.dumps(v2).count("field-id") + 1


def test_wire_format_error_carries_a_reason() -> None:
    with pytest.raises(WireFormatError) as info:
        unframe(b"\x00\x00")
    assert info.value.reason == "not_framed"


def test_quality_events_round_trip_with_the_same_encoder_and_decoder() -> None:
    """`k2 ingest` produces quality events with the same serde; fastavro's reference decode agrees."""
    from k2.quality.records import QualityEventRow, events_batch
    from k2.schema.quality_event import QUALITY_EVENT, EventKind, EventStatus

    rows = [
        QualityEventRow(
            "e1", "BINANCE", "BTCUSDT", "trade", EventKind.GAP, 100, 139, 40,
            1_723_075_200_000_000, 1_795_600_000_123_456, EventStatus.RESOLVED, 1_795_600_001_000_000, 40, "fetched",
        ),
        QualityEventRow(
            "e2", "BINANCE", "ETHUSDT", "trade", EventKind.DUPLICATE, 7, 7, 1,
            1_723_075_200_000_001, 1_795_600_000_000_000, EventStatus.RECORDED, 1_795_600_000_000_000,
        ),
    ]  # fmt: skip
    batch = events_batch(rows)
    values = AvroEncoder(SCHEMA_ID, QUALITY_EVENT).encode(batch)
    reference = fastavro.parse_schema(to_avro(QUALITY_EVENT))
    first = fastavro.schemaless_reader(io.BytesIO(values[0][5:]), reference, None)
    assert (first["kind"], first["status"], first["count"]) == ("GAP", "RESOLVED", 40)
    assert first["detected_at"].isoformat() == "2026-11-25T09:46:40.123456+00:00"
    decoded = AvroDecoder(QUALITY_EVENT, lambda _id: to_avro(QUALITY_EVENT)).decode(values)
    assert not decoded.errors
    assert decoded.batch.equals(batch)


def test_ids_without_a_usable_record_schema_are_rejected_with_a_reason_and_remembered(trades: pa.RecordBatch) -> None:
    """A message framed with the id of a registered non-record schema (the ``"string"`` schema commonly
    registered for keys, a union), of another record type, of a schema the registry cannot give as
    Avro, or of an unknown id, is a reported error, never an exception; each id is fetched once."""
    from k2.schema.quality_event import QUALITY_EVENT

    good = AvroEncoder(1, TRADE).encode(trades.slice(0, 2))
    body = good[0][5:]
    schemas: dict[int, Any] = {1: to_avro(TRADE), 2: "string", 3: ["null", "string"], 4: to_avro(QUALITY_EVENT)}
    calls: list[int] = []

    def fetch(schema_id: int) -> Any:
        calls.append(schema_id)
        if schema_id == 5:
            raise ValueError("a PROTOBUF schema, not Avro")
        return schemas[schema_id]

    decoder = AvroDecoder(TRADE, fetch)
    key_string = io.BytesIO()
    fastavro.schemaless_writer(key_string, "string", "BTCUSDT")
    values = [frame(2, key_string.getvalue()), frame(3, b"\x00"), frame(4, body), frame(5, body), frame(6, body)]
    for _ in range(2):
        result = decoder.decode([good[0], *values, good[1]])
        assert result.indices == [0, 6]
        assert result.batch.to_pylist() == trades.slice(0, 2).to_pylist()
        assert [(i, e.reason) for i, e in result.errors] == [
            (1, "incompatible_schema"),
            (2, "incompatible_schema"),
            (3, "incompatible_schema"),
            (4, "incompatible_schema"),
            (5, "unknown_schema"),
        ]
    messages = [str(e) for _, e in result.errors]
    assert messages[0] == "schema 2 is a string schema, not a Trade record"
    assert messages[1] == "schema 3 is a ['null', 'string'] schema, not a Trade record"
    assert messages[2].startswith("schema 4 (k2.quality.QualityEvent) does not resolve to Trade: ")
    assert len(messages[2]) < 400  # fastavro's message holds both schemas: cut short
    assert messages[3] == "schema 5 cannot be read: a PROTOBUF schema, not Avro"
    assert sorted(calls) == [1, 2, 3, 4, 5, 6]  # failures are cached like schemas


def test_a_registry_outage_is_raised_not_reported(trades: pa.RecordBatch) -> None:
    from k2.errors import BusUnavailable

    def fetch(schema_id: int) -> Any:
        raise BusUnavailable("registry down")

    values = AvroEncoder(1, TRADE).encode(trades.slice(0, 1))
    with pytest.raises(BusUnavailable):
        AvroDecoder(TRADE, fetch).decode(values)
