"""Query latency on the table built by ``benchmarks.build_table`` (>= 10M rows).

    python -m benchmarks.build_table --warehouse benchmarks/.work/query --rows 10000000
    python -m benchmarks.bench_query --warehouse benchmarks/.work/query --runs 30

For each query: the cold first run on a fresh QueryEngine (empty plan cache, empty DuckDB Parquet
metadata cache; the OS page cache is whatever the machine has), then median and p95 of ``--runs``
warm runs (wall clock, and the CPU time of all threads, which other load on the machine inflates
less). The profile splits the cold run into pyiceberg planning and the rest (DuckDB scan +
result conversion), and shows what was planned. ``--alternatives`` also times the designs the
engine did not take (time_bucket(INTERVAL) bars, the HUGEINT order key, the limb fallback for exact
VWAP) and a cost profile (which columns and aggregates the OHLCV time goes to) on the same files;
``--encodings`` rewrites the symbol-day's files with other Parquet settings (in a scratch folder of
the warehouse, removed afterwards) and runs the same OHLCV SQL on them.

``--baseline-runs N`` (default 5; 0 skips it) also runs each query the way pyiceberg documents it,
``table.scan(row_filter=...).to_arrow()`` then DuckDB over the Arrow table, N times, interleaved
with the engine's call (so both see the same machine), and prints both medians and the ratio. Two
forms: as documented (every column; for ``count(*)`` the whole table would be ~4 GB of Arrow on this
shared machine, so that one is left out) and the favourable one with ``selected_fields`` (only the
columns the query reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan

from k2.config import LakeSettings
from k2.lake.catalog import open_catalog, table_identifier
from k2.logging import configure_logging
from k2.query import QueryEngine, exact, sql
from k2.query.bars import bar_parameters
from k2.schema.kinds import RecordKind

DAY = datetime(2024, 8, 9, tzinfo=UTC)  # a full day inside the 10M-row table
HOUR = datetime(2024, 8, 9, 12, tzinfo=UTC)
SYMBOL = "BTCUSDT"


def _queries() -> dict[str, tuple[Callable[[QueryEngine], Any], dict[str, Any]]]:
    """name -> (call, the plan filter it uses)."""
    hour = {"symbol": SYMBOL, "start_time": HOUR, "end_time": HOUR + timedelta(hours=1)}
    day = {"symbol": SYMBOL, "start_time": DAY, "end_time": DAY + timedelta(days=1)}
    return {
        "trades: 1 symbol, 1 hour, limit 1000": (lambda e: e.query_trades(**hour, limit=1000), hour),
        "ohlcv 1m: 1 symbol-day": (lambda e: e.ohlcv(SYMBOL, "1m", DAY, DAY + timedelta(days=1)), day),
        "vwap: 1 symbol-day": (lambda e: e.vwap(SYMBOL, DAY, DAY + timedelta(days=1)), day),
        "sql: SELECT count(*) FROM trades": (lambda e: e.sql("SELECT count(*) AS n FROM trades"), {}),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def _time(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _wall_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall time and CPU time of all the process's threads (DuckDB's workers included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(lake: LakeSettings, runs: int) -> list[dict[str, Any]]:
    results = []
    for name, (call, flt) in _queries().items():
        # Cold: a fresh engine; planning timed on its own first, then the query on another fresh engine.
        with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
            plan_s, plan = _time(lambda: engine.plan(**flt))  # noqa: B023 - called right here
            warm_plan_s, _ = _time(lambda: engine.plan(**flt))  # noqa: B023
        with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
            cold_s, value = _time(lambda: call(engine))  # noqa: B023
            timings = [_wall_cpu(lambda: call(engine)) for _ in range(runs)]  # noqa: B023
        samples = [wall for wall, _ in timings]
        method = exact.choose_method(plan.max_abs_price, plan.max_abs_quantity, len(plan.files), plan.max_file_rows)
        results.append(
            {
                "query": name,
                "cold_ms": _ms(cold_s),
                "median_ms": _ms(statistics.median(samples)),
                "p95_ms": _ms(_p95(samples)),
                "min_ms": _ms(min(samples)),
                "cpu_median_ms": _ms(statistics.median(cpu for _, cpu in timings)),
                "plan_cold_ms": _ms(plan_s),
                "plan_cached_ms": f"{warm_plan_s * 1000:.3f}",
                "files": len(plan.files),
                "planned_rows": plan.rows,
                "notional_method": f"{method.kind}" + (f"/{method.chunk_rows}" if method.chunk_rows else ""),
                "result": _describe(value),
            }
        )
    return results


def _describe(value: Any) -> str:
    if hasattr(value, "num_rows"):
        if value.num_rows == 1 and value.table.num_columns == 1:
            return f"{value.table.column(0)[0].as_py():,}"
        return f"{value.num_rows} rows"
    return str(value)


def alternatives(lake: LakeSettings, runs: int) -> list[dict[str, Any]]:
    """Designs not taken, timed on the symbol-day's planned files with a raw DuckDB connection."""
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        plan = engine.plan(SYMBOL, start_time=DAY, end_time=DAY + timedelta(days=1))
    location = plan.files[0].rsplit("/data/", 1)[0] + "/"
    con = sql.open_connection(location)
    where, params = plan.sql_where()
    params["files"] = list(plan.files)
    chunked = exact.NotionalMethod("chunked", None)
    bars, compact = bar_parameters(plan, 60_000_000)
    wide = {k: v for k, v in bars.items() if not k.startswith("key_")}
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "ohlcv 1m, engine SQL (BIGINT order key)" if compact else "ohlcv 1m, engine SQL": (
            sql.aggregate_sql(where, chunked, bucketed=True, compact_key=compact),
            {**params, **bars},
        ),
        "ohlcv 1m, HUGEINT order key": (
            sql.aggregate_sql(where, chunked, bucketed=True, compact_key=False),
            {**params, **wide},
        ),
        "ohlcv 1m, time_bucket(INTERVAL, timestamptz), HUGEINT key, one level": (
            "SELECT time_bucket($width, \"timestamp\", TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket, "
            'arg_min(price, (epoch_us("timestamp")::HUGEINT << 64) + source_sequence) AS open, max(price), '
            'min(price), arg_max(price, (epoch_us("timestamp")::HUGEINT << 64) + source_sequence) AS close, '
            f"sum(quantity), count(*), sum(price * quantity) FROM read_parquet($files) WHERE {where} "
            "GROUP BY bucket ORDER BY bucket",
            {**params, "width": timedelta(minutes=1)},
        ),
        "vwap, chunked decimal sums (engine)": (sql.aggregate_sql(where, chunked, bucketed=False), params),
        "vwap, limb sums (fallback for extreme values)": (
            sql.aggregate_sql(where, exact.LIMBS, bucketed=False),
            params,
        ),
    }
    cases.update(_profile_cases(where, params, bars))
    try:
        return _time_sql(con, cases, runs)
    finally:
        con.close()


def _profile_cases(where: str, params: dict[str, Any], bars: dict[str, int]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Where the OHLCV time goes: the same scan reading more columns, then grouping."""
    src = f"FROM read_parquet($files) WHERE {where}"
    bucket = {**params, "width": bars["width"], "origin": bars["origin"]}
    q = 'SELECT (epoch_us("timestamp") - $origin) // $width AS q'
    return {
        "profile: read quantity": (f"SELECT sum(quantity) {src}", params),
        "profile: + price": (f"SELECT sum(quantity), max(price) {src}", params),
        "profile: + timestamp": (f'SELECT sum(quantity), max(price), max("timestamp") {src}', params),
        "profile: + source_sequence": (
            f'SELECT sum(quantity), max(price), max("timestamp"), max(source_sequence) {src}',
            params,
        ),
        "profile: group by minute, count": (f"{q}, count(*) {src} GROUP BY q", bucket),
        "profile: group by minute, high/low/volume/notional": (
            f"{q}, max(price), min(price), sum(quantity), sum(price * quantity) {src} GROUP BY q",
            bucket,
        ),
    }


def _time_sql(
    con: duckdb.DuckDBPyConnection, cases: dict[str, tuple[str, dict[str, Any]]], runs: int
) -> list[dict[str, Any]]:
    """Median/p95 wall and median CPU of each case; runs interleaved so load changes hit all alike."""
    for text, p in cases.values():
        sql.run(con, text, p)  # warm-up
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (text, p) in cases.items():
            timings[name].append(_wall_cpu(lambda: sql.run(con, text, p)))  # noqa: B023
    return [
        {
            "variant": name,
            "median_ms": _ms(statistics.median(w for w, _ in t)),
            "p95_ms": _ms(_p95([w for w, _ in t])),
            "cpu_median_ms": _ms(statistics.median(c for _, c in t)),
        }
        for name, t in timings.items()
    ]


def encodings(lake: LakeSettings, runs: int) -> list[dict[str, Any]]:
    """The symbol-day's files rewritten with other Parquet settings (pyarrow, same rows), same query.

    Written under ``<warehouse>/encoding-experiment`` and removed afterwards; the table is untouched.
    """
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        plan = engine.plan(SYMBOL, start_time=DAY, end_time=DAY + timedelta(days=1))
    low_cardinality = [
        "symbol", "exchange", "asset_class", "currency", "side", "price", "quantity",
        "trade_conditions.list.element", "vendor_data.key_value.key",
    ]  # fmt: skip
    ints = ["timestamp", "source_sequence", "ingestion_timestamp", "platform_sequence"]
    settings: dict[str, dict[str, Any]] = {
        "dictionary only for low-cardinality columns": {"use_dictionary": low_cardinality},
        "... and DELTA_BINARY_PACKED int64 columns": {
            "use_dictionary": low_cardinality,
            "column_encoding": dict.fromkeys(ints, "DELTA_BINARY_PACKED"),
        },
        "dictionary page limit 16 KiB (write.parquet.dict-size-bytes=16384)": {"dictionary_pagesize_limit": 16_384},
        "row groups of 131,072 rows": {"row_group_size": 131_072},
    }
    root = (lake.warehouse / "encoding-experiment").resolve()
    variants = {"as written by TableWriter": list(plan.files)}
    try:
        for i, (name, options) in enumerate(settings.items()):
            folder = root / str(i)
            folder.mkdir(parents=True)
            variants[name] = []
            for f in plan.files:
                out = folder / Path(f).name
                pq.write_table(pq.read_table(f), out, compression="zstd", **options)
                variants[name].append(str(out))
        where, params = plan.sql_where()
        bars, compact = bar_parameters(plan, 60_000_000)
        text = sql.aggregate_sql(where, exact.NotionalMethod("chunked", None), bucketed=True, compact_key=compact)
        con = sql.open_connection(str(lake.warehouse.resolve()) + "/")
        try:
            cases = {name: (text, {**params, **bars, "files": files}) for name, files in variants.items()}
            rows = _time_sql(con, cases, runs)
        finally:
            con.close()
        for row in rows:
            row["bytes"] = f"{sum(os.path.getsize(f) for f in variants[row['variant']]):,}"
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _between(symbol: str, start: datetime, end: datetime) -> BooleanExpression:
    return And(
        EqualTo("symbol", symbol),
        GreaterThanOrEqual("timestamp", start.isoformat()),
        LessThan("timestamp", end.isoformat()),
    )


# The straightforward SQL over the Arrow table ``t``: the same answers (bars ordered by exchange time,
# then the venue's sequence), written the way a user of DuckDB would.
_BASELINE_SQL = {
    "trades: 1 symbol, 1 hour, limit 1000": (
        'SELECT * FROM t ORDER BY "timestamp", source_sequence NULLS LAST, platform_sequence LIMIT 1000'
    ),
    "ohlcv 1m: 1 symbol-day": (
        'SELECT time_bucket(INTERVAL 1 MINUTE, "timestamp") AS bucket, '
        'arg_min(price, {"t": "timestamp", "s": source_sequence}) AS open, max(price) AS high, min(price) AS low, '
        'arg_max(price, {"t": "timestamp", "s": source_sequence}) AS close, sum(quantity) AS volume, '
        "count(*) AS trades, sum(price * quantity) / sum(quantity) AS vwap FROM t GROUP BY bucket ORDER BY bucket"
    ),
    "vwap: 1 symbol-day": "SELECT sum(price * quantity) / sum(quantity) AS vwap FROM t",
    "sql: SELECT count(*) FROM trades": "SELECT count(*) AS n FROM t",
}
_BASELINE_COLUMNS = {
    "trades: 1 symbol, 1 hour, limit 1000": None,  # every column is in the result
    "ohlcv 1m: 1 symbol-day": ("timestamp", "source_sequence", "price", "quantity"),
    "vwap: 1 symbol-day": ("price", "quantity"),
    "sql: SELECT count(*) FROM trades": ("symbol",),
}


def baseline(lake: LakeSettings, runs: int) -> list[dict[str, Any]]:
    """Each query through pyiceberg's documented route, interleaved with the engine's call."""
    table = open_catalog(lake).load_table(table_identifier(lake, RecordKind.TRADES))
    filters: dict[str, BooleanExpression | None] = {
        "trades: 1 symbol, 1 hour, limit 1000": _between(SYMBOL, HOUR, HOUR + timedelta(hours=1)),
        "ohlcv 1m: 1 symbol-day": _between(SYMBOL, DAY, DAY + timedelta(days=1)),
        "vwap: 1 symbol-day": _between(SYMBOL, DAY, DAY + timedelta(days=1)),
        "sql: SELECT count(*) FROM trades": None,
    }
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def route(name: str, columns: tuple[str, ...] | None) -> Any:
        options: dict[str, Any] = {} if columns is None else {"selected_fields": columns}
        if filters[name] is not None:
            options["row_filter"] = filters[name]
        con.register("t", table.scan(**options).to_arrow())
        try:
            return con.sql(_BASELINE_SQL[name]).fetchall()
        finally:
            con.unregister("t")

    rows = []
    queries = _queries()
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        for name, (call, _) in queries.items():
            forms = {"selected columns": _BASELINE_COLUMNS[name] or None}
            if filters[name] is not None:
                forms = {"every column (as documented)": None, **forms}
            call(engine)
            for form, columns in forms.items():
                route(name, columns)  # warm-up (OS page cache, imports)
                ours: list[float] = []
                theirs: list[float] = []
                for _ in range(runs):
                    theirs.append(_time(lambda: route(name, columns))[0])  # noqa: B023
                    ours.append(_time(lambda: call(engine))[0])  # noqa: B023
                k2_ms, base_ms = statistics.median(ours), statistics.median(theirs)
                rows.append(
                    {
                        "query": name,
                        "pyiceberg route": form,
                        "k2 median ms": _ms(k2_ms),
                        "pyiceberg median ms": _ms(base_ms),
                        "ratio": f"{base_ms / k2_ms:.1f}x",
                    }
                )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, default=Path("benchmarks/.work/query"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--alternatives", action="store_true", help="designs not taken, and a cost profile")
    parser.add_argument("--encodings", action="store_true", help="OHLCV on the day's files rewritten differently")
    parser.add_argument("--baseline-runs", type=int, default=5, help="runs of the pyiceberg route (0: none)")
    args = parser.parse_args()
    configure_logging("WARNING")
    lake = LakeSettings(warehouse=args.warehouse)
    build = args.warehouse / "build.json"
    if build.exists():
        print("build:", json.dumps(json.loads(build.read_text())))
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"duckdb {duckdb.__version__}"
    )
    with QueryEngine(open_catalog(lake), lake, refresh_interval_s=None) as engine:
        stats = engine.stats()
        refresh_s = statistics.median(_time(engine.refresh)[0] for _ in range(10))
    print(
        f"table: {stats['rows']:,} rows, {stats['files']} files, {stats['bytes']:,} bytes, "
        f"{stats['snapshots']} snapshots, {stats['min_timestamp']} .. {stats['max_timestamp']}"
    )
    print(f"refresh() (reload table metadata): median {_ms(refresh_s)} ms\n")
    print(_table(measure(lake, args.runs)))
    if args.baseline_runs:
        print()
        print(_table(baseline(lake, args.baseline_runs)))
    if args.alternatives:
        print()
        print(_table(alternatives(lake, args.runs)))
    if args.encodings:
        print()
        print(_table(encodings(lake, args.runs)))
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
