"""Commit latency as the table ages: N consecutive small commits through TableWriter.

    python -m benchmarks.bench_commits --commits 2000 --rows 1000

Reports the median commit latency of the first and the last 100 commits and their ratio (target
<= 1.5x), p95/max, and the table's snapshot/manifest/file counts at the end. ``--no-maintenance``
turns the writer's snapshot expiry off (keep every snapshot), to show what it prevents.
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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000, help="rows per commit")
    parser.add_argument("--window", type=int, default=100, help="commits in the first/last window")
    parser.add_argument("--keep-snapshots", type=int, default=LakeSettings().keep_snapshots)
    parser.add_argument("--maintenance-every", type=int, default=LakeSettings().maintenance_every_commits)
    parser.add_argument("--no-maintenance", action="store_true", help="never expire snapshots")
    parser.add_argument("--warehouse", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument(
        "--table-property", action="append", default=[], metavar="KEY=VALUE", help="override a table property"
    )
    args = parser.parse_args()
    configure_logging("WARNING")

    warehouse = args.warehouse or Path(tempfile.mkdtemp(prefix="k2-bench-commits-"))
    every = 10**9 if args.no_maintenance else args.maintenance_every
    lake = LakeSettings(warehouse=warehouse, keep_snapshots=args.keep_snapshots, maintenance_every_commits=every)
    catalog = open_catalog(lake)
    table = load_or_create_table(catalog, lake, RecordKind.TRADES)
    if args.table_property:
        with table.transaction() as tx:
            tx.set_properties(dict(kv.split("=", 1) for kv in args.table_property))
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)

    commit_s: list[float] = []  # CommitResult.duration_s: sort + write files + commit
    call_s: list[float] = []  # the whole append() call, including maintenance when it runs
    cpu_s: list[float] = []  # process CPU time of the append() call (robust to other load)
    started = time.perf_counter()
    for i, batch in enumerate(shifted_trades(args.commits * args.rows, batch_rows=args.rows)):
        t0, c0 = time.perf_counter(), time.process_time()
        result = writer.append(batch, snapshot_properties={"k2.bench.commit": str(i)})
        call_s.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
        commit_s.append(result.duration_s)
        if (i + 1) % 250 == 0:
            print(f"  {i + 1} commits, last-50 median {_ms(statistics.median(commit_s[-50:]))}", flush=True)
    total = time.perf_counter() - started

    w = args.window
    first, last = statistics.median(commit_s[:w]), statistics.median(commit_s[-w:])
    t0 = time.perf_counter()
    planned = len(list(writer.table.scan().plan_files()))
    plan_s = time.perf_counter() - t0
    stats = maintenance.table_stats(writer.table)
    n = len(commit_s)
    print()
    print(
        f"commits: {n} x {args.rows} rows, maintenance: {'off' if args.no_maintenance else f'every {every}'}"
        f", keep_snapshots: {args.keep_snapshots}, table properties: {args.table_property or 'catalog defaults'}"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| median commit, commits 1-{w} | {_ms(first)} |")
    print(f"| median commit, commits {n - w + 1}-{n} | {_ms(last)} |")
    print(f"| ratio last/first | {last / first:.2f}x |")
    cpu_first, cpu_last = statistics.median(cpu_s[:w]), statistics.median(cpu_s[-w:])
    print(f"| median CPU per append(), first / last {w} | {_ms(cpu_first)} / {_ms(cpu_last)} |")
    print(f"| CPU ratio last/first | {cpu_last / cpu_first:.2f}x |")
    print(f"| p95 / max commit (all) | {_ms(_pct(commit_s, 0.95))} / {_ms(max(commit_s))} |")
    print(f"| p95 / max commit, last {w} | {_ms(_pct(commit_s[-w:], 0.95))} / {_ms(max(commit_s[-w:]))} |")
    print(f"| p95 / max append() call incl. maintenance | {_ms(_pct(call_s, 0.95))} / {_ms(max(call_s))} |")
    print(f"| total wall time | {total:.1f} s ({n * args.rows / total:,.0f} rows/s) |")
    print(f"| snapshots / manifests at the end | {stats.snapshots} / {stats.manifests} |")
    print(f"| live data files / records | {stats.data_files} / {stats.records:,} |")
    print(f"| metadata.json files on disk | {stats.metadata_files_on_disk} |")
    print(f"| full-table scan planning ({planned} files) | {_ms(plan_s)} |")
    print(
        f"| writer stats | {writer.get_stats()['maintenance_runs']} maintenance runs, "
        f"{writer.get_stats()['conflicts']} conflicts |"
    )


if __name__ == "__main__":
    main()
