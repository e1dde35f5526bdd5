"""The column-wise Avro path against the per-message fastavro path it replaces.

Every test decodes the same message values twice, with ``AvroDecoder(columnar=True)`` (the batch
path) and ``columnar=False`` (fastavro per message: the reference), and asserts the same batch, the
same indices and the same errors (reason and text). The values are real trades and quotes, mutated
byte by byte (truncated, bytes overwritten, bytes inserted, trailing bytes), and written with
writer schemas that differ from the reader's in every way Avro resolution allows (the kind of
change a new optional field such as ``instrument`` brings).
"""

from __future__ import annotations

import io
import itertools
import re
from copy import deepcopy
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2.bus.avro_decode import compile_plan
from k2.bus.serde import AvroDecoder, AvroEncoder, DecodeResult, frame
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.feed.stamp import parse_canonical
from k2.schema import TRADE, to_arrow, to_avro
from k2.schema.kinds import RecordKind, spec
from k2.schema.model import Field, ListType, LongType, MapType, RecordSchema, StringType
from k2.schema.quote import QUOTE, QUOTE_V1
from k2.schema.trade import TRADE_V2
from k2.sources import RawFrame

SCHEMA_ID = 7


@pytest.fixture(scope="module")
def session() -> dict[RecordKind, pa.RecordBatch]:
    """Real trades and quotes (the bundled session's first 4,000 frames)."""
    recorded = itertools.islice(read_recording(BUNDLED_BINANCE_SESSION), 4_000)
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in recorded]
    parsed = parse_canonical(
        "binance", frames, symbols=["BTCUSDT", "ETHUSDT"], kinds=(RecordKind.TRADES, RecordKind.QUOTES)
    )
    assert parsed.records[RecordKind.TRADES].num_rows > 100 and parsed.records[RecordKind.QUOTES].num_rows > 100
    return dict(parsed.records)


def _both(record: RecordSchema, schemas: dict[int, Any], values: list[bytes | None]) -> DecodeResult:
    """Decode with both paths, assert they agree, return the result."""
    fast = AvroDecoder(record, schemas.__getitem__).decode(values)
    reference = AvroDecoder(record, schemas.__getitem__, columnar=False).decode(values)
    assert fast.indices == reference.indices
    assert _errors(fast) == _errors(reference)
    assert fast.batch.schema == reference.batch.schema
    assert fast.batch.to_pylist() == reference.batch.to_pylist()
    assert fast.batch.equals(reference.batch)
    return fast


def _errors(result: DecodeResult) -> list[tuple[int, str, str]]:
    return [(i, e.reason, re.sub(r"0x[0-9a-f]+", "0x?", str(e))) for i, e in result.errors]  # no addresses


def _mutations(value: bytes) -> list[bytes]:
    """Deterministic malformed variants of one real value (fault injection on a real message)."""
    out = [value[:cut] for cut in range(len(value))]  # every truncation
    for i in range(5, len(value)):
        for byte in (0x00, 0x01, 0x7F, 0x80, 0xFF, value[i] ^ 0x01):
            if byte != value[i]:
                out.append(value[:i] + bytes([byte]) + value[i + 1 :])
    out += [value[:i] + b"\x02" + value[i:] for i in range(5, len(value), 3)]  # an inserted byte
    out += [value + b"\x00", value + b"\x02\x41"]  # trailing bytes
    return out


@pytest.mark.parametrize("kind", [RecordKind.TRADES, RecordKind.QUOTES])
def test_mutated_real_messages_decode_exactly_as_fastavro_decodes_them(
    session: dict[RecordKind, pa.RecordBatch], kind: RecordKind
) -> None:
    record = spec(kind).record
    batch = session[kind]
    values: list[bytes | None] = list(AvroEncoder(SCHEMA_ID, record).encode(batch.slice(0, 40)))
    mutated = [m for v in values[:2] for m in _mutations(v)]
    mixed = [x for pair in zip(values * (len(mutated) // len(values) + 1), mutated, strict=False) for x in pair]
    result = _both(record, {SCHEMA_ID: to_avro(record)}, mixed)
    assert len(result.errors) > len(mutated) // 3  # most mutations are errors ...
    assert result.batch.num_rows > len(mixed) // 2  # ... and every real value between them decodes


@pytest.mark.parametrize(
    "replacement",
    [b"BI\xc3ANCE", b"BI\xc0\xafNCE", b"BI\xed\xa0\x80CE", b"B\xf4\x90\x80\x80CE", b"B\xf0\x9f\x98\x80CE"],
    ids=["lone-lead-byte", "overlong", "surrogate", "beyond-U+10FFFF", "valid-emoji"],
)
def test_utf8_is_checked_as_python_checks_it(session: dict[RecordKind, pa.RecordBatch], replacement: bytes) -> None:
    """Invalid UTF-8 is the message's error (as fastavro reports it), valid UTF-8 decodes; the neighbours decode."""
    assert len(replacement) == len(b"BINANCE")  # the same length: only the text is wrong
    values = AvroEncoder(SCHEMA_ID, TRADE).encode(session[RecordKind.TRADES].slice(0, 3))
    body = values[1].replace(b"BINANCE", replacement, 1)
    result = _both(TRADE, {SCHEMA_ID: to_avro(TRADE)}, [values[0], body, values[2]])
    valid = replacement.startswith(b"B\xf0")
    assert result.indices == ([0, 1, 2] if valid else [0, 2])
    assert [e.reason for _, e in result.errors] == ([] if valid else ["undecodable"])


def _write(writer: dict[str, Any], rows: list[dict[str, Any]], schema_id: int) -> list[bytes]:
    parsed = fastavro.parse_schema(writer)
    out = []
    for row in rows:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, row)
        out.append(frame(schema_id, buf.getvalue()))
    return out


def _rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    rows = batch.to_pylist()
    for row in rows:
        row["vendor_data"] = dict(row["vendor_data"])
    return rows


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _writer_variants() -> dict[str, tuple[dict[str, Any], Any]]:
    """Writer schemas of trades that differ from the reader's, and how to change a row for each."""
    base = to_avro(TRADE)
    variants: dict[str, tuple[dict[str, Any], Any]] = {}

    reordered = deepcopy(base)
    reordered["fields"].reverse()
    variants["fields in another order"] = (reordered, None)

    extra = deepcopy(base)
    extra["fields"][3:3] = [
        {"name": "x_string", "type": "string"},
        {"name": "x_long", "type": "long"},
        {"name": "x_bool", "type": "boolean"},
        {"name": "x_bytes", "type": ["null", "bytes"], "default": None},
        {"name": "x_enum", "type": {"type": "enum", "name": "Extra", "symbols": ["A", "B"]}},
        {"name": "x_list", "type": {"type": "array", "items": "long"}},
        {"name": "x_map", "type": {"type": "map", "values": "string"}},
    ]
    extras = {"x_string": "ré", "x_long": -(2**40), "x_bool": True, "x_bytes": b"\x00\xff",
              "x_enum": "B", "x_list": [1, -2, 3], "x_map": {"k": "v"}}  # fmt: skip
    empty = {"x_bytes": None, "x_list": [], "x_map": {}}
    variants["writer fields the reader lacks"] = (extra, lambda row, i: {**row, **extras, **(empty if i % 2 else {})})

    optional = deepcopy(base)
    _field(optional, "trade_id")["type"] = ["null", "string"]
    variants["required in the reader, optional in the writer"] = (
        optional, lambda row, i: {**row, "trade_id": None} if i % 5 == 0 else row,
    )  # fmt: skip

    null_last = deepcopy(base)
    _field(null_last, "source_sequence")["type"] = ["long", "null"]
    variants["union with null second"] = (null_last, lambda row, i: {**row, "source_sequence": None} if i % 3 else row)

    sides = deepcopy(base)
    _field(sides, "side")["type"]["symbols"] = ["UNKNOWN", "SELL", "MID", "BUY"]
    variants["enum symbols reordered, one the reader lacks"] = (
        sides, lambda row, i: {**row, "side": "MID"} if i % 7 == 0 else row,
    )  # fmt: skip

    conditions = deepcopy(base)
    variants["array items"] = (conditions, lambda row, i: {**row, "trade_conditions": ["a", "é" * i][: i % 3]})

    promoted = deepcopy(base)
    _field(promoted, "platform_sequence")["type"] = "int"
    variants["int promoted to long (left to fastavro)"] = (promoted, None)

    millis = deepcopy(base)
    _field(millis, "ingestion_timestamp")["type"] = {"type": "long"}
    variants["timestamp written as a plain long"] = (
        millis,
        lambda row, i: {**row, "ingestion_timestamp": 1_723_161_255_343_000 + i},
    )
    return variants


@pytest.mark.parametrize("variant", list(_writer_variants()))
def test_every_writer_schema_variant_decodes_as_fastavro_resolves_it(
    session: dict[RecordKind, pa.RecordBatch], variant: str
) -> None:
    writer, change = _writer_variants()[variant]
    assert (compile_plan(writer, TRADE) is None) == ("left to fastavro" in variant)
    rows = _rows(session[RecordKind.TRADES].slice(0, 50))
    if change is not None:
        rows = [change(row, i) for i, row in enumerate(rows)]
    base = AvroEncoder(SCHEMA_ID, TRADE).encode(session[RecordKind.TRADES].slice(50, 3))
    values = [base[0], *_write(writer, rows, SCHEMA_ID + 1), base[1], base[2]]
    result = _both(TRADE, {SCHEMA_ID: to_avro(TRADE), SCHEMA_ID + 1: writer}, values)
    assert result.batch.num_rows + len(result.errors) == len(values)
    assert result.batch.num_rows >= 3 + len(rows) // 2


def test_the_reader_of_a_newer_version_fills_what_older_writers_lack(session: dict[RecordKind, pa.RecordBatch]) -> None:
    """Trade v2 messages (an older `k2 ingest`, before ``instrument``) read with today's v3 reader, column
    by column: ``instrument`` is null (its Avro default: nothing is derived on the bus; queries derive it
    from the symbol, docs/query.md), every other column as written; and v3 messages beside them keep theirs."""
    batch = session[RecordKind.TRADES].slice(0, 20)
    v2 = to_arrow(TRADE_V2)
    old = AvroEncoder(1, TRADE_V2).encode(pa.RecordBatch.from_arrays([batch.column(f.name) for f in v2], schema=v2))
    new = AvroEncoder(2, TRADE).encode(batch)
    assert compile_plan(to_avro(TRADE_V2), TRADE) is not None  # the batch path, not the fallback
    result = _both(TRADE, {1: to_avro(TRADE_V2), 2: to_avro(TRADE)}, old + new)
    assert result.errors == []
    instruments = result.batch.column("instrument").to_pylist()
    assert instruments == [None] * 20 + batch.column("instrument").to_pylist()
    assert set(instruments[20:]) <= {"BTC/USDT", "ETH/USDT"} and None not in instruments[20:]
    rest = [n for n in result.batch.schema.names if n != "instrument"]
    assert result.batch.select(rest).slice(0, 20).equals(batch.select(rest))


def test_quote_v1_messages_read_with_the_v2_reader(session: dict[RecordKind, pa.RecordBatch]) -> None:
    """Quote v1 (sizes required) messages read with today's v2 reader (sizes optional): same rows."""
    batch = session[RecordKind.QUOTES].slice(0, 20)
    values = AvroEncoder(1, QUOTE_V1).encode(batch.cast(to_arrow(QUOTE_V1)))
    assert compile_plan(to_avro(QUOTE_V1), QUOTE) is not None
    result = _both(QUOTE, {1: to_avro(QUOTE_V1)}, values)
    assert result.errors == [] and result.batch.to_pylist() == batch.to_pylist()


def _map_record() -> RecordSchema:
    return RecordSchema(
        "Tags", "k2.test", 1, "a map", (Field(1, "tags", MapType(2, 3, StringType(), StringType()), "m"),)
    )


def _string(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data) * 2]) + data  # zigzag varint length (short strings)


def test_maps_written_in_several_blocks_or_sized_blocks_decode_exactly() -> None:
    """Java writers may split a map into blocks, or give a block's byte size (a negative count)."""
    record = _map_record()
    one_block = b"\x04" + _string("a") + _string("1") + _string("b") + _string("2") + b"\x00"
    two_blocks = b"\x02" + _string("a") + _string("1") + b"\x02" + _string("b") + _string("2") + b"\x00"
    entries = _string("a") + _string("1") + _string("b") + _string("2")
    sized = b"\x03" + bytes([len(entries) * 2]) + entries + b"\x00"  # count -2, then the size
    repeated = b"\x04" + _string("a") + _string("1") + _string("a") + _string("2") + b"\x00"  # last one wins
    values = [frame(1, body) for body in (one_block, two_blocks, sized, repeated, b"\x00")]
    result = _both(record, {1: to_avro(record)}, values)
    assert result.batch.column("tags").to_pylist() == [
        [("a", "1"), ("b", "2")], [("a", "1"), ("b", "2")], [("a", "1"), ("b", "2")], [("a", "2")], []
    ]  # fmt: skip


def test_optional_maps_and_lists_round_trip_with_nulls_and_empties() -> None:
    """Optional (union) maps and arrays: present, null and empty, encoded as fastavro encodes them."""
    record = RecordSchema(
        "Optional", "k2.test", 1, "optional containers",
        (Field(1, "m", MapType(2, 3, StringType(), StringType()), "m", False),
         Field(4, "l", ListType(5, LongType()), "l", False)),
    )  # fmt: skip
    rows = [{"m": [("a", "1"), ("é", "")], "l": [1, -2]}, {"m": None, "l": None}, {"m": [], "l": []}]
    values = AvroEncoder(SCHEMA_ID, record).encode(pa.RecordBatch.from_pylist(rows, schema=to_arrow(record)))
    expected = _write(to_avro(record), [{"m": {"a": "1", "é": ""}, "l": [1, -2]}, {"m": None, "l": None},
                                        {"m": {}, "l": []}], SCHEMA_ID)  # fmt: skip
    assert values == expected
    assert _both(record, {SCHEMA_ID: to_avro(record)}, values).batch.to_pylist() == rows
