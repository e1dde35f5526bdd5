"""Benchmark data: the bundled real Binance recording, repeated and shifted forward in time.

``shifted_trades(n)`` yields canonical trade batches (``TRADE_ARROW_SCHEMA``) built from the
34,419 real trades of the bundled recording. Copy ``k`` is shifted ``k`` recording-spans forward
(~651 s), so the data is continuous over hours and days; trade ids (and ``source_sequence``) are
shifted by ``k`` times each symbol's id range so they stay unique and consecutive per symbol;
``message_id`` is recomputed from the new ids, ``platform_sequence`` keeps counting, and the
``event_time``/``trade_time`` entries of ``vendor_data`` move with the timestamps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.feed.stamp import parse_canonical
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame
from k2.sources.binance import EXCHANGE
from k2.sources.columns import message_ids

_VENDOR_TIME_KEYS = ("event_time", "trade_time")


@dataclass(frozen=True)
class _Base:
    batch: pa.RecordBatch
    symbols: list[str]
    ids: np.ndarray  # int64 source_sequence
    id_span: np.ndarray  # per row: its symbol's id range
    span_us: int  # shift between copies
    first_us: int  # earliest trade timestamp
    vendor_keys: pa.Array
    vendor_items: pa.Array
    vendor_offsets: pa.Array
    vendor_mask: pa.Array
    vendor_ms: pa.Array  # int64 values at vendor_mask positions


@cache
def _base() -> _Base:
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_TRADES)]
    parsed = parse_canonical("binance", frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=0, is_sample_data=True)
    batch = parsed.records[RecordKind.TRADES]
    ids = batch.column("source_sequence").to_numpy()
    symbols = batch.column("symbol").to_pylist()
    spans: dict[str, int] = {}
    for sym in set(symbols):
        sym_ids = ids[np.array([s == sym for s in symbols])]
        spans[sym] = int(sym_ids.max() - sym_ids.min() + 1)
    ts = batch.column("timestamp").cast(pa.int64()).to_numpy()
    span_us = -(-int(ts.max() - ts.min() + 1) // 1_000_000) * 1_000_000  # whole seconds, rounded up
    vendor = batch.column("vendor_data")
    keys, items = vendor.keys, vendor.items
    mask = pc.is_in(keys, value_set=pa.array(_VENDOR_TIME_KEYS))
    return _Base(
        batch=batch,
        symbols=symbols,
        ids=ids,
        id_span=np.array([spans[s] for s in symbols], np.int64),
        span_us=span_us,
        first_us=int(ts.min()),
        vendor_keys=keys,
        vendor_items=items,
        vendor_offsets=vendor.offsets,
        vendor_mask=mask,
        vendor_ms=items.filter(mask).cast(pa.int64()),
    )


def recording_rows() -> int:
    """Trades in one copy of the bundled recording."""
    return int(_base().batch.num_rows)


def _copy(k: int, offset_us: int, first_seq: int) -> pa.RecordBatch:
    b = _base()
    n = b.batch.num_rows
    shift_us = offset_us + k * b.span_us
    ids = b.ids + k * b.id_span
    ts_type = pa.timestamp("us", tz="UTC")

    def shifted(name: str) -> pa.Array:
        return pa.array(b.batch.column(name).cast(pa.int64()).to_numpy() + shift_us, ts_type)

    new_ms = pc.add(b.vendor_ms, pa.scalar(shift_us // 1000, pa.int64())).cast(pa.string())
    items = pc.replace_with_mask(b.vendor_items, b.vendor_mask, new_ms)
    vendor = pa.MapArray.from_arrays(b.vendor_offsets, b.vendor_keys, items)
    columns = {
        "message_id": message_ids(EXCHANGE, b.symbols, ids.tolist()),
        "trade_id": pa.array(ids).cast(pa.string()),
        "timestamp": shifted("timestamp"),
        "source_sequence": pa.array(ids),
        "ingestion_timestamp": shifted("ingestion_timestamp"),
        "platform_sequence": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
        "vendor_data": vendor,
    }
    arrays = [columns.get(f.name, b.batch.column(f.name)).cast(f.type) for f in TRADE_ARROW_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=TRADE_ARROW_SCHEMA)


def shifted_trades(
    n_rows: int, *, start: datetime | None = None, batch_rows: int | None = None
) -> Iterator[pa.RecordBatch]:
    """Yield ``n_rows`` canonical trades of shifted real data, in recording order.

    ``start`` puts the first trade at that time (default: the recording's own time, 2024-08-08
    23:54:15 UTC). Batches are one recording copy each (~11 minutes of trades), or exactly
    ``batch_rows`` rows each (the last one may be shorter) when given.
    """
    copies = _copies(n_rows, start)
    if batch_rows is None:
        yield from copies
        return
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for copy in copies:
        pending.append(copy)
        pending_rows += copy.num_rows
        if pending_rows < batch_rows:
            continue
        joined = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
        full = (pending_rows // batch_rows) * batch_rows
        for i in range(0, full, batch_rows):
            yield joined.slice(i, batch_rows)
        pending = [joined.slice(full)] if full < pending_rows else []
        pending_rows -= full
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _copies(n_rows: int, start: datetime | None) -> Iterator[pa.RecordBatch]:
    b = _base()
    offset_us = 0 if start is None else int(start.timestamp() * 1_000_000) - b.first_us
    produced = 0
    k = 0
    while produced < n_rows:
        copy = _copy(k, offset_us, produced).slice(0, n_rows - produced)
        yield copy
        produced += copy.num_rows
        k += 1
