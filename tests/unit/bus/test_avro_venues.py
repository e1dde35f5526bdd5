"""Every venue's real trades and quotes through the column-wise Avro codec, exactly.

The codec follows the canonical record, not a venue, but each venue fills it differently: Kraken's
prices come from JSON numbers (``66450.0``, ``0.10000000``) and its tickers carry no time (null
``timestamp``), Coinbase's 2021 tickers carry no sizes (Quote v2's null ``bid_size``/``ask_size``),
and each keeps its own ``vendor_data`` keys. Each body must equal fastavro's own encoding of the row,
and both decoders (column-wise and fastavro per message) must give the batch back unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2.bus.serde import AvroDecoder, AvroEncoder
from k2.emulator.kraken import BUNDLED_KRAKEN
from k2.emulator.recording import BUNDLED_COINBASE_SESSION, read_recording
from k2.feed.stamp import parse_canonical
from k2.schema import to_avro
from k2.schema.kinds import RecordKind, spec
from k2.sources import RawFrame

SCHEMA_ID = 11
COINBASE_PRODUCTS = ("SKL-USD", "SKL-BTC", "SKL-GBP", "BAND-GBP", "BAND-BTC", "NMR-EUR", "YFI-BTC", "DASH-BTC")
VENUES: dict[str, tuple[Path, tuple[str, ...]]] = {
    "kraken": (BUNDLED_KRAKEN, ("BTC/USDT", "BTC/USD")),
    "coinbase": (BUNDLED_COINBASE_SESSION, COINBASE_PRODUCTS),
}
KINDS = (RecordKind.TRADES, RecordKind.QUOTES)


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, RecordKind], pa.RecordBatch]:
    out = {}
    for venue, (recording, symbols) in VENUES.items():
        frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(recording)]
        parsed = parse_canonical(venue, frames, symbols=symbols, kinds=KINDS)
        out.update({(venue, kind): batch for kind, batch in parsed.records.items()})
    return out


def _reference_body(record: Any, row: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf, fastavro.parse_schema(to_avro(record)), {**row, "vendor_data": dict(row["vendor_data"])}
    )
    return buf.getvalue()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("venue", list(VENUES))
def test_a_venues_records_encode_as_fastavro_does_and_decode_back_exactly(
    records: dict[tuple[str, RecordKind], pa.RecordBatch], venue: str, kind: RecordKind
) -> None:
    batch = records[(venue, kind)]
    record = spec(kind).record
    values = AvroEncoder(SCHEMA_ID, record).encode(batch)
    assert len(values) == batch.num_rows
    for value, row in zip(values, batch.to_pylist(), strict=True):
        assert value[5:] == _reference_body(record, row)
    for columnar in (True, False):
        result = AvroDecoder(record, {SCHEMA_ID: to_avro(record)}.__getitem__, columnar=columnar).decode(values)
        assert result.errors == [] and result.indices == list(range(batch.num_rows))
        assert result.batch.equals(batch)
        assert result.batch.to_pylist() == batch.to_pylist()


def test_the_venues_fill_the_optional_columns_the_codec_must_carry(
    records: dict[tuple[str, RecordKind], pa.RecordBatch],
) -> None:
    """What makes the round trips above meaningful: real nulls where the venue sends nothing."""
    kraken_quotes, coinbase_quotes = records[("kraken", RecordKind.QUOTES)], records[("coinbase", RecordKind.QUOTES)]
    assert kraken_quotes.num_rows == 2 and kraken_quotes.column("timestamp").null_count == 2  # v2 tickers: no time
    assert kraken_quotes.column("bid_size").null_count == 0
    assert coinbase_quotes.num_rows > 50 and coinbase_quotes.column("bid_size").null_count == coinbase_quotes.num_rows
    assert records[("kraken", RecordKind.TRADES)].num_rows == 1_000
