"""Build the query benchmark's trades table: >= 10M rows of shifted real trades, via TableWriter.

    python -m benchmarks.build_table --warehouse benchmarks/.work/query --rows 10000000 --batch-rows 500000
    python -m benchmarks.build_table --warehouse benchmarks/.work/query-rg128k \
        --property write.parquet.row-group-limit=131072
    python -m benchmarks.build_table --warehouse benchmarks/.work/query-by-symbol --partition-by-symbol

The bundled real recording (34,419 Binance trades, BTCUSDT + ETHUSDT) is repeated and shifted
forward in time (``benchmarks._data.shifted_trades``): 10M rows cover ~2.2 days from
2024-08-08 23:54 UTC, ~2.6M BTCUSDT trades per full day. Rows are committed with the project's
writer, ``--batch-rows`` per commit (one snapshot each, sorted by symbol and timestamp, with the
writer's own maintenance). The warehouse must not exist yet or be empty; it is never committed
(``benchmarks/.work/`` is git-ignored). A summary is printed and saved as ``build.json`` in the
warehouse for ``bench_query``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import DayTransform, IdentityTransform

from benchmarks._data import shifted_trades
from k2.config import LakeSettings
from k2.lake.catalog import create_table, load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.logging import configure_logging
from k2.schema import TRADE, to_iceberg
from k2.schema.kinds import RecordKind

DEFAULT_START = datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)  # the recording's first trade


def _batches(rows: int, batch_rows: int, start: datetime) -> Iterator[list[pa.RecordBatch]]:
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in shifted_trades(rows, start=start):
        while batch.num_rows:
            take = min(batch.num_rows, batch_rows - pending_rows)
            pending.append(batch.slice(0, take))
            pending_rows += take
            batch = batch.slice(take)
            if pending_rows == batch_rows:
                yield pending
                pending, pending_rows = [], 0
    if pending:
        yield pending


def _day_symbol_spec() -> PartitionSpec:
    schema = to_iceberg(TRADE)
    return PartitionSpec(
        PartitionField(schema.find_field("timestamp").field_id, 1000, DayTransform(), "timestamp_day"),
        PartitionField(schema.find_field("symbol").field_id, 1001, IdentityTransform(), "symbol"),
    )


def build(
    warehouse: Path,
    rows: int,
    batch_rows: int,
    start: datetime,
    properties: dict[str, str],
    by_symbol: bool = False,
) -> dict[str, object]:
    lake = LakeSettings(warehouse=warehouse)
    catalog = open_catalog(lake)
    if by_symbol:  # a comparison layout; production tables get k2.lake.catalog's spec
        create_table(catalog, (lake.namespace, lake.trades_table), RecordKind.TRADES, partition=_day_symbol_spec())
    table = load_or_create_table(catalog, lake, RecordKind.TRADES)
    if properties:
        with table.transaction() as tx:
            tx.set_properties(properties)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    started = time.perf_counter()
    commits = written = 0
    for batches in _batches(rows, batch_rows, start):
        result = writer.append(batches)
        commits += 1
        written += result.rows
        elapsed = time.perf_counter() - started
        print(f"  commit {commits:3d}: {written:>11,} rows  {elapsed:7.1f} s", file=sys.stderr)
    seconds = time.perf_counter() - started
    table = catalog.load_table((lake.namespace, lake.trades_table))
    files = list(table.scan().plan_files())
    snapshot = table.current_snapshot()
    return {
        "rows": written,
        "commits": commits,
        "batch_rows": batch_rows,
        "build_seconds": round(seconds, 1),
        "rows_per_second": round(written / seconds),
        "data_files": len(files),
        "data_bytes": sum(f.file.file_size_in_bytes for f in files),
        "snapshots_kept": len(table.metadata.snapshots),
        "snapshot_id": snapshot.snapshot_id if snapshot else None,
        "partition_spec": str(table.spec()),
        "extra_properties": properties,
        "start": start.isoformat(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, default=Path("benchmarks/.work/query"))
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch-rows", type=int, default=500_000)
    parser.add_argument("--start", type=datetime.fromisoformat, default=DEFAULT_START)
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra table property set before writing, e.g. write.parquet.row-group-limit=131072",
    )
    parser.add_argument(
        "--partition-by-symbol",
        action="store_true",
        help="create the table partitioned by day(timestamp) + identity(symbol) instead of the lake's spec",
    )
    args = parser.parse_args()
    properties = dict(p.split("=", 1) for p in args.property)
    if args.warehouse.exists() and any(args.warehouse.iterdir()):
        parser.error(f"{args.warehouse} is not empty: pick a new directory (or remove it yourself)")
    if args.start.tzinfo is None:
        parser.error("--start must carry a time zone, e.g. 2024-08-08T23:54:15+00:00")
    configure_logging("WARNING")
    summary = build(args.warehouse, args.rows, args.batch_rows, args.start, properties, args.partition_by_symbol)
    (args.warehouse / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
