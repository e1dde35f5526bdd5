"""Deduplication mechanisms, measured: which one K2 uses for (exchange, symbol, trade_id) uniqueness.

    .venv/bin/python -m benchmarks.bench_dedup [--copies 10] [--batch 5000]

On ``copies`` x 34,419 real trades (the bundled recording, shifted: ``benchmarks._data``), batches
of ``batch`` rows, one core:

1. **tracker**: ``SequenceTracker.observe`` + filter, the in-process mechanism (state = high-water
   mark + holes per symbol), on clean batches and on batches where every row is a duplicate.
2. **ingest**: ``Completeness.ingest``-equivalent work per batch (tracking + price check).
3. **merge-on-commit**: per commit, scan the table's keys (symbol, source_sequence) from Iceberg
   and anti-join the batch against them (pyarrow join), for the table sizes reached.
4. **rewrite**: a periodic dedup pass: read the whole table, keep one row per key, overwrite.

Prints a markdown table; results go to docs/quality.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks._data import shifted_trades
from k2.config import LakeSettings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.quality.checks import PriceJumpCheck
from k2.quality.sequence import SequenceTracker, StreamKey
from k2.schema.kinds import RecordKind


def _track(tracker: SequenceTracker, batch: pa.RecordBatch) -> pa.RecordBatch:
    symbols = batch.column("symbol")
    ids = batch.column("source_sequence").to_numpy()
    times = batch.column("timestamp").cast(pa.int64()).to_numpy()
    keep = np.ones(batch.num_rows, dtype=bool)
    for symbol in pc.unique(symbols).to_pylist():
        idx = np.flatnonzero(pc.equal(symbols, symbol).to_numpy(zero_copy_only=False))
        keep[idx] = tracker.observe(StreamKey("BINANCE", symbol), ids[idx], times[idx], 0).keep
    return batch.filter(pa.array(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    batches = list(shifted_trades(args.copies * 34_419, batch_rows=args.batch))
    rows = sum(b.num_rows for b in batches)
    results: list[tuple[str, float, str]] = []

    tracker = SequenceTracker()
    t0 = time.perf_counter()
    kept = sum(_track(tracker, b).num_rows for b in batches)
    clean = time.perf_counter() - t0
    assert kept == rows
    t0 = time.perf_counter()
    again = sum(_track(tracker, b).num_rows for b in batches)
    dups = time.perf_counter() - t0
    assert again == 0
    results.append(("tracker, new rows", clean / rows * 1e6, f"{rows / clean:,.0f} rows/s"))
    results.append(("tracker, all duplicates", dups / rows * 1e6, f"{rows / dups:,.0f} rows/s"))

    check = PriceJumpCheck(Decimal("0.05"))
    t0 = time.perf_counter()
    for b in batches:
        for symbol in pc.unique(b.column("symbol")).to_pylist():
            part = b.filter(pc.equal(b.column("symbol"), symbol))
            check.check(
                symbol,
                part.column("source_sequence").to_pylist(),
                part.column("price"),
                part.column("timestamp").cast(pa.int64()).to_pylist(),
            )
    price = time.perf_counter() - t0
    results.append(("price-jump check", price / rows * 1e6, f"{rows / price:,.0f} rows/s"))

    with tempfile.TemporaryDirectory() as tmp:
        lake = LakeSettings(warehouse=Path(tmp), maintenance_every_commits=1000)
        catalog = open_catalog(lake)
        table = load_or_create_table(catalog, lake, RecordKind.TRADES)
        writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
        merge_times: list[tuple[int, float]] = []
        stored = 0
        for b in batches:
            t0 = time.perf_counter()
            table = catalog.load_table((lake.namespace, lake.trades_table))
            key_schema = pa.schema([("symbol", pa.string()), ("source_sequence", pa.int64())])
            keys = table.scan(selected_fields=("symbol", "source_sequence")).to_arrow().cast(key_schema)
            mine = pa.table(
                {"symbol": b.column("symbol"), "source_sequence": b.column("source_sequence"),
                 "i": pa.array(np.arange(b.num_rows))}
            )  # fmt: skip
            new_rows = mine.join(keys, keys=["symbol", "source_sequence"], join_type="left anti")["i"]
            fresh = b.take(new_rows.combine_chunks())
            merge_times.append((stored, time.perf_counter() - t0))
            writer.append(fresh)
            stored += fresh.num_rows
        for size, label in ((0, "empty table"), (rows // 2, "half"), (rows - args.batch, "full")):
            near = min(merge_times, key=lambda m: abs(m[0] - size))
            results.append(
                (f"merge-on-commit, table of {near[0]:,} rows ({label})", near[1] / args.batch * 1e6,
                 f"{near[1] * 1000:.0f} ms per {args.batch}-row commit")
            )  # fmt: skip
        t0 = time.perf_counter()
        table = catalog.load_table((lake.namespace, lake.trades_table))
        everything = table.scan().to_arrow()
        index = pa.table({"i": pa.array(np.arange(everything.num_rows))})
        firsts = (
            everything.select(["symbol", "source_sequence"]).append_column("i", index["i"])
            .group_by(["symbol", "source_sequence"]).aggregate([("i", "min")])
        )  # fmt: skip
        deduped = everything.take(firsts["i_min"])
        table.overwrite(deduped.cast(table.schema().as_arrow()))
        rewrite = time.perf_counter() - t0
        results.append(
            (f"periodic rewrite of {everything.num_rows:,} rows", rewrite / rows * 1e6, f"{rewrite:.2f} s per pass")
        )

    print(f"{rows:,} trades, batches of {args.batch}\n")
    print("| mechanism | µs per row | throughput / cost |")
    print("| --- | ---: | --- |")
    for name, us, note in results:
        print(f"| {name} | {us:.2f} | {note} |")


if __name__ == "__main__":
    main()
