"""Append throughput: large batches (default 100k rows per commit) through TableWriter.

    python -m benchmarks.bench_append --commits 10 --rows 100000

Each commit sorts the batch, writes its Parquet files (one per day x symbol partition) and commits
one snapshot. Reports rows/s and the commit latency per batch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._data import shifted_trades
from k2.config import LakeSettings
from k2.lake import maintenance
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.logging import configure_logging
from k2.schema.kinds import RecordKind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per commit")
    parser.add_argument("--warehouse", type=Path, default=None, help="default: a fresh temporary directory")
    args = parser.parse_args()
    configure_logging("WARNING")

    warehouse = args.warehouse or Path(tempfile.mkdtemp(prefix="k2-bench-append-"))
    lake = LakeSettings(warehouse=warehouse)
    catalog = open_catalog(lake)
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)

    batches = list(shifted_trades(args.commits * args.rows, batch_rows=args.rows))  # generated up front
    durations: list[float] = []
    files: list[int] = []
    started = time.perf_counter()
    for batch in batches:
        result = writer.append(batch)
        durations.append(result.duration_s)
        snapshot = writer.table.snapshot_by_id(result.snapshot_id)
        assert snapshot is not None
        assert snapshot.summary is not None
        files.append(int(snapshot.summary["added-data-files"] or 0))
    total = time.perf_counter() - started
    rows = sum(b.num_rows for b in batches)
    stats = maintenance.table_stats(writer.table)
    assert stats.records == rows, (stats.records, rows)

    print(f"commits: {len(durations)} x {args.rows:,} rows")
    print("| measure | value |")
    print("|---|---|")
    print(f"| rows/s (sum of commit times) | {rows / sum(durations):,.0f} |")
    print(f"| rows/s (wall, incl. maintenance) | {rows / total:,.0f} |")
    median_ms, max_ms = statistics.median(durations) * 1000, max(durations) * 1000
    print(f"| commit latency median / max | {median_ms:.0f} ms / {max_ms:.0f} ms |")
    print(f"| data files per commit (median) | {statistics.median(files):g} |")
    print(f"| records in table | {stats.records:,} |")


if __name__ == "__main__":
    main()
