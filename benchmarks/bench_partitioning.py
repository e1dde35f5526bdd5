"""Partition spec / sort order alternatives for the trades table, measured on the same data.

    python -m benchmarks.bench_partitioning --commits 400 --rows 2500

For each layout: a fresh table, ``--commits`` appends of ``--rows`` real (shifted) trades through
TableWriter (2 symbols, ~5 h of data across midnight at the defaults), then the query side:
``symbol = BTCUSDT AND timestamp in one hour``: files pyiceberg plans, planning time, and DuckDB's
time to read those files with the same filter (median of 5); the same for a whole day.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

from benchmarks._data import shifted_trades
from k2.config import LakeSettings
from k2.lake.catalog import create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.logging import configure_logging
from k2.schema import TRADE, to_iceberg
from k2.schema.kinds import RecordKind

_SCHEMA = to_iceberg(TRADE)
_TS = _SCHEMA.find_field("timestamp").field_id
_SYM = _SCHEMA.find_field("symbol").field_id


def _spec(*fields: tuple[int, object, str]) -> PartitionSpec:
    return PartitionSpec(
        *(
            PartitionField(source_id=src, field_id=1000 + i, transform=t, name=name)
            for i, (src, t, name) in enumerate(fields)
        )
    )


LAYOUTS: dict[str, Callable[[], PartitionSpec]] = {
    "day(timestamp) + symbol": lambda: _spec(
        (_TS, DayTransform(), "timestamp_day"), (_SYM, IdentityTransform(), "symbol")
    ),
    "day(timestamp)": lambda: _spec((_TS, DayTransform(), "timestamp_day")),
    "hour(timestamp) + symbol": lambda: _spec(
        (_TS, HourTransform(), "timestamp_hour"), (_SYM, IdentityTransform(), "symbol")
    ),
    "unpartitioned": lambda: UNPARTITIONED_PARTITION_SPEC,
}


def _run(name: str, catalog: Catalog, lake: LakeSettings, args: argparse.Namespace) -> dict[str, str]:
    identifier = (lake.namespace, name.replace("(", "_").replace(")", "").replace(" + ", "_"))
    create_table(catalog, identifier, RecordKind.TRADES, partition=LAYOUTS[name]())
    writer = TableWriter(catalog, identifier, lake)
    commit_s: list[float] = []
    files: list[int] = []
    for batch in shifted_trades(args.commits * args.rows, batch_rows=args.rows):
        result = writer.append(batch)
        commit_s.append(result.duration_s)
        snapshot = writer.table.snapshot_by_id(result.snapshot_id)
        assert snapshot is not None
        assert snapshot.summary is not None
        files.append(int(snapshot.summary["added-data-files"] or 0))

    table = writer.table
    hour = datetime(2024, 8, 9, 2, tzinfo=UTC)
    one_hour = _query(table, hour, timedelta(hours=1))
    one_day = _query(table, datetime(2024, 8, 9, tzinfo=UTC), timedelta(days=1))
    total_files = len(list(table.scan().plan_files()))
    return {
        "layout": name,
        "median commit": f"{statistics.median(commit_s) * 1000:.1f} ms",
        "p95 commit": f"{sorted(commit_s)[int(0.95 * len(commit_s))] * 1000:.1f} ms",
        "files/commit": f"{statistics.mean(files):.2f}",
        "files total": str(total_files),
        "1 h: files planned": one_hour["files"],
        "1 h: plan": one_hour["plan"],
        "1 h: DuckDB": one_hour["read"],
        "1 h: rows": one_hour["rows"],
        "1 day: files planned": one_day["files"],
        "1 day: plan": one_day["plan"],
        "1 day: DuckDB": one_day["read"],
        "1 day: rows": one_day["rows"],
    }


def _query(table: Table, start: datetime, span: timedelta) -> dict[str, str]:
    """Plan ``symbol = BTCUSDT AND start <= timestamp < start + span`` and read it with DuckDB."""
    end = start + span
    row_filter = And(
        EqualTo("symbol", "BTCUSDT"),
        And(GreaterThanOrEqual("timestamp", start.isoformat()), LessThan("timestamp", end.isoformat())),
    )
    plans = []
    for _ in range(5):
        t0 = time.perf_counter()
        tasks = list(table.scan(row_filter=row_filter).plan_files())
        plans.append(time.perf_counter() - t0)
    paths = [t.file.file_path.removeprefix("file://") for t in tasks]
    con = duckdb.connect()
    reads = []
    for _ in range(5):
        t0 = time.perf_counter()
        row = con.execute(
            "SELECT count(*), sum(quantity) FROM read_parquet(?) WHERE symbol = ? AND timestamp >= ? AND timestamp < ?",
            [paths, "BTCUSDT", start, end],
        ).fetchone()
        reads.append(time.perf_counter() - t0)
    assert row is not None
    return {
        "files": str(len(paths)),
        "plan": f"{statistics.median(plans) * 1000:.1f} ms",
        "read": f"{statistics.median(reads) * 1000:.1f} ms",
        "rows": f"{row[0]:,}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--rows", type=int, default=2500, help="rows per commit")
    parser.add_argument("--layout", action="append", choices=sorted(LAYOUTS), help="default: all")
    args = parser.parse_args()
    configure_logging("WARNING")
    results = []
    for name in args.layout or list(LAYOUTS):
        lake = LakeSettings(warehouse=Path(tempfile.mkdtemp(prefix="k2-bench-part-")))
        results.append(_run(name, open_catalog(lake), lake, args))
        print(f"  done: {name}", flush=True)
    print(f"\n{args.commits} commits x {args.rows:,} rows; queries: BTCUSDT 2024-08-09 02:00-03:00 UTC (1 h)")
    print("and BTCUSDT all of 2024-08-09 (1 day); plan and DuckDB times are medians of 5")
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(r[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
