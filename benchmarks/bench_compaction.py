"""Query latency before and after compaction, on a table built by many small commits.

    python -m benchmarks.bench_compaction --commits 2000 --rows 1000

Builds the table the way `bench_commits` does (``--commits`` appends of ``--rows`` rows through
TableWriter, the writer's default maintenance on) unless ``--warehouse`` holds one already
(``--reuse``), then times each query on a fresh QueryEngine (cold: empty plan cache) and ``--runs``
warm runs (median), compacts with ``k2.lake.compaction.compact`` (the default target unless
``--target-bytes``), checks that the table still holds exactly the rows it held (count and distinct
message ids, read through DuckDB), and times the same queries again.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._data import shifted_trades
from k2.config import LakeSettings, MaintenanceSettings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.compaction import compact
from k2.lake.health import table_health
from k2.lake.writer import TableWriter
from k2.logging import configure_logging
from k2.query import QueryEngine
from k2.schema.kinds import RecordKind

DAY = datetime(2024, 8, 9, tzinfo=UTC)
HOUR = datetime(2024, 8, 9, 5, tzinfo=UTC)
SYMBOL = "BTCUSDT"

QUERIES: dict[str, Callable[[QueryEngine], Any]] = {
    "trades: 1 symbol, 1 hour, limit 1000": lambda e: e.query_trades(
        SYMBOL, start_time=HOUR, end_time=HOUR + timedelta(hours=1), limit=1000
    ),
    "ohlcv 1m: 1 symbol-day": lambda e: e.ohlcv(SYMBOL, "1m", DAY, DAY + timedelta(days=1)),
    "vwap: 1 symbol-day": lambda e: e.vwap(SYMBOL, DAY, DAY + timedelta(days=1)),
    "sql: SELECT count(*) FROM trades": lambda e: e.sql("SELECT count(*) AS n FROM trades"),
}


def _time(lake: LakeSettings, runs: int) -> dict[str, tuple[float, float]]:
    """query -> (cold seconds on a fresh engine, median of ``runs`` warm runs)."""
    out: dict[str, tuple[float, float]] = {}
    for name, call in QUERIES.items():
        with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
            t0 = time.perf_counter()
            call(engine)
            cold = time.perf_counter() - t0
            warm = []
            for _ in range(runs):
                t0 = time.perf_counter()
                call(engine)
                warm.append(time.perf_counter() - t0)
        out[name] = (cold, statistics.median(warm))
    return out


def _content(lake: LakeSettings) -> list[dict[str, Any]]:
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        return engine.sql("SELECT count(*) AS n, count(DISTINCT message_id) AS ids FROM trades").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000, help="rows per commit")
    parser.add_argument("--runs", type=int, default=10, help="warm runs per query")
    parser.add_argument("--warehouse", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--reuse", action="store_true", help="the warehouse already holds the table")
    parser.add_argument("--target-bytes", type=int, default=MaintenanceSettings().target_file_bytes)
    args = parser.parse_args()
    configure_logging("WARNING")

    warehouse = args.warehouse or Path(tempfile.mkdtemp(prefix="k2-bench-compaction-"))
    lake = LakeSettings(warehouse=warehouse)
    catalog = open_catalog(lake)
    table = load_or_create_table(catalog, lake, RecordKind.TRADES)
    if not args.reuse:
        writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
        t0 = time.perf_counter()
        for i, batch in enumerate(shifted_trades(args.commits * args.rows, batch_rows=args.rows)):
            writer.append(batch)
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} commits", flush=True)
        print(f"built {args.commits} commits x {args.rows} rows in {time.perf_counter() - t0:.1f} s")
        table = writer.table
    small = args.target_bytes * 3 // 4
    before_health = table_health(table, small)
    before_rows = _content(lake)
    before = _time(lake, args.runs)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = compact(table, args.target_bytes, min_files=5)
    compact_s = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after_health = table_health(table, small)
    after_rows = _content(lake)
    assert after_rows == before_rows, (before_rows, after_rows)
    after = _time(lake, args.runs)

    print()
    print(f"table: {warehouse}, target {args.target_bytes:,} bytes, rows {after_rows}")
    print(
        f"compaction: {result.files_removed} files ({result.bytes_removed:,} B) -> {result.files_added} "
        f"({result.bytes_added:,} B) in {compact_s:.1f} s, {result.attempts} attempt(s); "
        f"peak RSS {rss_before / 1024:,.0f} MiB before, {rss_after / 1024:,.0f} MiB after"
    )
    print("| | data files | partitions | max files/partition | avg file |")
    print("|---|---|---|---|---|")
    for label, h in (("before", before_health), ("after", after_health)):
        size = f"{h.avg_file_bytes / 1024:,.1f} KiB"
        print(f"| {label} | {h.data_files} | {h.partitions} | {h.max_partition_files} | {size} |")
    print()
    print(f"| query | before: cold / median of {args.runs} | after: cold / median | median speed-up |")
    print("|---|---|---|---|")
    for name in QUERIES:
        (bc, bw), (ac, aw) = before[name], after[name]
        print(
            f"| {name} | {bc * 1000:.1f} / {bw * 1000:.1f} ms | {ac * 1000:.1f} / {aw * 1000:.1f} ms | {bw / aw:.1f}x |"
        )


if __name__ == "__main__":
    main()
