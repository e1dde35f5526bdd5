"""QueryEngine: trades, OHLCV bars, exact VWAP and read-only SQL over the Iceberg trades table.

pyiceberg plans which data files a query needs (partition and column-metrics pruning, cached per
snapshot, see :mod:`k2.query.planner`); DuckDB reads exactly those Parquet files with the query's
filters bound as parameters. Nothing materialises the whole table. See docs/query.md.

Times: arguments must be timezone-aware (any zone; converted to UTC); naive datetimes are rejected
with QueryError. ``start_time`` is inclusive, ``end_time`` exclusive. Results carry
``timestamp[us, tz=UTC]`` and ``decimal128(38, 12)`` columns.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import K2Settings, LakeSettings
from k2.errors import K2Error, QueryError, ReadOnlyViolation, SnapshotExpired
from k2.lake.catalog import load_existing_table, load_or_create_trades_table, open_catalog
from k2.logging import get_logger
from k2.metrics import QUERY_SECONDS
from k2.query import exact, sql
from k2.query.planner import CacheInfo, Planner, ScanPlan, TradeFilter, from_us, local_path, to_us
from k2.query.result import QueryResult
from k2.schema import PRICE_PRECISION, PRICE_SCALE, TRADE_ARROW_SCHEMA

log = get_logger(__name__)

T = TypeVar("T")

MAX_LIMIT = 1_000_000
_INTERVAL = re.compile(r"\s*(\d+)\s*(ms|s|m|h|d)\s*")
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
MAX_INTERVAL = timedelta(days=366)

_PRICE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_UTC_US = pa.timestamp("us", tz="UTC")
OHLCV_SCHEMA = pa.schema(
    [
        pa.field("bucket", _UTC_US, False),
        pa.field("open", _PRICE, False),
        pa.field("high", _PRICE, False),
        pa.field("low", _PRICE, False),
        pa.field("close", _PRICE, False),
        pa.field("volume", _PRICE, False),
        pa.field("trades", pa.int64(), False),
        pa.field("vwap", _PRICE, True),  # null only when the bar's volume is zero
    ]
)


def parse_interval(text: str) -> timedelta:
    """A bar width such as ``250ms``, ``1s``, ``5m``, ``1h``, ``1d`` (1 ms up to 366 days)."""
    match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise QueryError(f"invalid interval {text!r}: use <number><unit>, unit one of ms, s, m, h, d")
    width = timedelta(microseconds=int(match[1]) * _UNIT_US[match[2]])
    if not timedelta(0) < width <= MAX_INTERVAL:
        raise QueryError(f"invalid interval {text!r}: must be between 1ms and 366d")
    return width


def _utc_us(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise QueryError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(f"{name} must be timezone-aware (e.g. tzinfo=UTC); naive datetimes are rejected")
    return to_us(value)


def _name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QueryError(f"{what} must be a non-empty string")
    return value.strip().upper()


def make_filter(
    symbol: str | None = None,
    exchange: str | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> TradeFilter:
    """Validate query arguments into a :class:`TradeFilter` (symbols/exchanges upper-cased)."""
    start_us, end_us = _utc_us(start_time, "start_time"), _utc_us(end_time, "end_time")
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise QueryError("start_time must be before end_time")
    return TradeFilter(_name(symbol, "symbol"), _name(exchange, "exchange"), start_us, end_us)


class QueryEngine:
    """Queries over the trades table. Thread-safe (one DuckDB connection, used under a lock).

    ``refresh_interval_s``: reload the table metadata (to see new snapshots) when the last load is
    older than this before a query; ``None`` reloads only on :meth:`refresh`.
    """

    def __init__(
        self,
        catalog: Catalog,
        lake: LakeSettings,
        *,
        refresh_interval_s: float | None = 1.0,
        plan_cache_size: int = 256,
        connection: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self._catalog = catalog
        self._identifier = (lake.namespace, lake.trades_table)
        self._name = ".".join(self._identifier)
        self._refresh_interval_s = refresh_interval_s
        self._lock = threading.RLock()
        try:
            table = load_or_create_trades_table(catalog, lake)
        except K2Error:
            raise
        except Exception as exc:
            raise QueryError(f"cannot load table {self._name}: {exc}") from exc
        self._loaded_at = time.monotonic()
        self._planner = Planner(table, plan_cache_size)
        self._location = local_path(table.location()).rstrip("/") + "/"
        # ``connection``: a cursor of a connection from sql.open_connection (the REST API's workers share
        # one locked-down database); the engine owns (and closes) it either way.
        self._con = connection if connection is not None else sql.open_connection(self._location)
        self._view_ready = False
        self._view_snapshot: int | None = None  # the snapshot the `trades` view points at
        self._symbols: tuple[int | None, list[str]] | None = None

    @classmethod
    def from_settings(cls, settings: K2Settings) -> QueryEngine:
        """An engine on the configured warehouse, whose trades table must exist: reading creates
        nothing (:class:`~k2.errors.LakeError` naming the warehouse otherwise)."""
        lake = settings.lake
        catalog = open_catalog(lake, create=False)
        load_existing_table(catalog, lake, lake.trades_table)
        return cls(catalog, lake)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def interrupt(self) -> None:
        """Stop the DuckDB query running on this engine now (from any thread; no-op when idle).

        The interrupted call raises QueryError; the engine stays usable.
        """
        self._con.interrupt()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- table state --------------------------------------------------------------------------------
    @property
    def table(self) -> Table:
        return self._planner.table

    def refresh(self) -> None:
        """Reload the table metadata; a new snapshot gets new plans (the old ones are dropped)."""
        try:
            table = self._catalog.load_table(self._identifier)
        except Exception as exc:
            raise QueryError(f"cannot reload table {self._name}: {exc}") from exc
        with self._lock:
            if self._planner.set_table(table):
                log.debug("query.snapshot_changed", table=self._name, snapshot_id=self._planner.snapshot_id)
            self._loaded_at = time.monotonic()

    def _maybe_refresh(self) -> None:
        interval = self._refresh_interval_s
        if interval is not None and time.monotonic() - self._loaded_at >= interval:
            self.refresh()

    def plan(
        self,
        symbol: str | None = None,
        exchange: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> ScanPlan:
        """The files a query with these filters reads (cached per snapshot and filter)."""
        self._maybe_refresh()
        return self._planner.plan(make_filter(symbol, exchange, start_time, end_time))

    def cache_info(self) -> CacheInfo:
        return self._planner.cache_info()

    # --- queries ------------------------------------------------------------------------------------
    def query_trades(
        self,
        symbol: str | None = None,
        exchange: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 1000,
    ) -> QueryResult:
        """Trades in time order (then by the venue's sequence), at most ``limit`` (1..1,000,000)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be an integer between 1 and {MAX_LIMIT}")
        flt = make_filter(symbol, exchange, start_time, end_time)
        with self._timed("trades"):

            def attempt() -> pa.Table:
                plan = self._planner.plan(flt)
                if not plan.files:
                    return TRADE_ARROW_SCHEMA.empty_table()
                where, params = plan.sql_where()
                params.update(files=list(plan.files), limit=limit)
                if plan.rows > limit:
                    cutoff = self._run(sql.cutoff_sql(where), params).column("cutoff")[0].as_py()
                    if cutoff is None:
                        return TRADE_ARROW_SCHEMA.empty_table()
                    where += ' AND "timestamp" <= $cutoff'
                    params["cutoff"] = cutoff
                return self._run(sql.trades_sql(where), params)

            table = self._retrying(attempt)
        return QueryResult(table.cast(TRADE_ARROW_SCHEMA))

    def ohlcv(
        self,
        symbol: str,
        interval: str = "1m",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        exchange: str | None = None,
    ) -> QueryResult:
        """Bars of ``interval`` (epoch-aligned buckets): open/high/low/close, volume, trades, vwap.

        Open/close are the first/last trade by (timestamp, source_sequence); volume and VWAP are
        exact (docs/query.md); VWAP is rounded half-even to 12 decimal places.
        """
        if symbol is None:
            raise QueryError("ohlcv needs a symbol")
        width_us = parse_interval(interval) // timedelta(microseconds=1)
        flt = make_filter(symbol, exchange, start_time, end_time)
        with self._timed("ohlcv"):
            raw, method = self._retrying(lambda: self._aggregate(flt, bucketed=True, width_us=width_us))
            table = _ohlcv_table(raw, method)
        return QueryResult(table)

    def vwap(
        self,
        symbol: str,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        exchange: str | None = None,
    ) -> Decimal | None:
        """Exact volume-weighted average price, rounded half-even to 12 places; None without trades."""
        if symbol is None:
            raise QueryError("vwap needs a symbol")
        flt = make_filter(symbol, exchange, start_time, end_time)
        with self._timed("vwap"):
            raw, method = self._retrying(lambda: self._aggregate(flt, bucketed=False))
            if raw.num_rows == 0 or raw.column("trades")[0].as_py() is None:
                return None
            notional, volume = sql.aggregate_sums(raw, method)
            value = exact.vwap_unscaled(notional[0], volume[0])
        return None if value is None else exact.to_decimal(value)

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> QueryResult:
        """Run one read-only SELECT over the view ``trades`` (the current snapshot's data files).

        Refused with ReadOnlyViolation: several statements, anything but a SELECT/WITH/VALUES/
        DESCRIBE query (COPY, ATTACH, CREATE, INSERT, SET, PRAGMA, INSTALL, LOAD, ...), and
        reading any file outside the table's directory.
        """
        if not isinstance(query, str):
            raise QueryError("query must be a string")
        with self._timed("sql"):
            with self._lock:
                text = sql.check_read_only(self._con, query)

            def attempt() -> pa.Table:
                with self._lock:
                    self._ensure_view()
                    try:
                        return sql.run(self._con, text, params)
                    except duckdb.PermissionException as exc:
                        raise ReadOnlyViolation(f"refused: {exc}") from exc
                    except duckdb.IOException:
                        raise
                    except (duckdb.Error, TypeError, ValueError) as exc:
                        raise QueryError(f"query failed: {exc}") from exc

            table = self._retrying(attempt)
        return QueryResult(table)

    def symbols(self) -> list[str]:
        """Symbols present in the current snapshot, sorted (from file metrics where they are exact)."""
        self._maybe_refresh()
        plan = self._planner.plan(TradeFilter())
        cached = self._symbols
        if cached is not None and cached[0] == plan.snapshot_id:
            return list(cached[1])
        known = dict(plan.single_symbol_files)
        found = set(known.values())
        rest = [f for f in plan.files if f not in known]
        if rest:
            table = self._retrying(lambda: self._run(sql.distinct_symbols_sql(), {"files": rest}))
            found.update(table.column("symbol").to_pylist())
        result = sorted(found)
        self._symbols = (plan.snapshot_id, result)
        return list(result)

    def stats(self) -> dict[str, Any]:
        """Rows, data files, bytes, snapshots and time range of the current snapshot (metadata only)."""
        self._maybe_refresh()
        plan = self._planner.plan(TradeFilter())
        metadata = self._planner.table.metadata
        return {
            "table": self._name,
            "snapshot_id": plan.snapshot_id,
            "snapshots": len(metadata.snapshots),
            "files": len(plan.files),
            "rows": plan.rows,
            "bytes": plan.bytes,
            "min_timestamp": None if plan.min_timestamp_us is None else from_us(plan.min_timestamp_us),
            "max_timestamp": None if plan.max_timestamp_us is None else from_us(plan.max_timestamp_us),
        }

    # --- internals ----------------------------------------------------------------------------------
    @contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            QUERY_SECONDS.labels(kind=kind).observe(seconds)
            log.debug("query.done", table=self._name, kind=kind, seconds=round(seconds, 6))

    def _run(self, text: str, params: Mapping[str, Any]) -> pa.Table:
        with self._lock:
            try:
                table: pa.Table = sql.run(self._con, text, params)
            except duckdb.IOException:
                raise
            except duckdb.Error as exc:
                raise QueryError(f"query failed: {exc}") from exc
        return table

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` (which plans and queries); if a planned file vanished (table maintenance
        removed the files of the snapshot this engine held), refresh and retry once on the current
        snapshot. A second failure is :class:`SnapshotExpired`: a clear error, never partial rows."""
        self._maybe_refresh()
        try:
            return attempt()
        except (duckdb.IOException, SnapshotExpired) as exc:
            log.warning("query.file_missing", table=self._name, error=str(exc))
            self.refresh()
            try:
                return attempt()
            except duckdb.IOException as again:
                raise SnapshotExpired(
                    f"cannot read the data files of {self._name}: removed while this query read them (table "
                    f"maintenance expired its snapshot) or lost: {again}; retry the query"
                ) from again

    def _aggregate(
        self, flt: TradeFilter, *, bucketed: bool, width_us: int = 0
    ) -> tuple[pa.Table, exact.NotionalMethod]:
        plan = self._planner.plan(flt)
        method = exact.choose_method(plan.max_abs_price, plan.max_abs_quantity, len(plan.files), plan.max_file_rows)
        if not plan.files:
            return pa.table({"trades": pa.array([], pa.int64())}), method
        where, params = plan.sql_where()
        params["files"] = list(plan.files)
        compact = False
        if bucketed:
            bucket_params, compact = bar_parameters(plan, width_us)
            params.update(bucket_params)
        if method.needs_row_numbers:
            params["chunk_rows"] = method.chunk_rows
        text = sql.aggregate_sql(where, method, bucketed=bucketed, compact_key=compact)
        return self._run(text, params), method

    def _ensure_view(self) -> None:
        """Point the ``trades`` view at the current snapshot's files (caller holds the lock)."""
        plan = self._planner.plan(TradeFilter())
        if self._view_ready and self._view_snapshot == plan.snapshot_id:
            return
        try:
            if plan.files:
                sql.create_trades_view(self._con, plan.files)
            else:
                sql.create_empty_trades_view(self._con)
        except duckdb.IOException:
            raise  # a planned file is gone: the caller refreshes and retries (see _retrying)
        except duckdb.Error as exc:
            raise QueryError(f"cannot create the trades view: {exc}") from exc
        self._view_ready, self._view_snapshot = True, plan.snapshot_id


def bar_parameters(plan: ScanPlan, width_us: int) -> tuple[dict[str, int], bool]:
    """Bucket and order-key parameters for :func:`k2.query.sql.aggregate_sql`, from plan metrics.

    ``origin`` is a multiple of the width at or before every planned timestamp (so DuckDB's
    truncating division floors). The order key is the compact BIGINT form when (largest offset of
    a trade in its bucket) x (sequence span) provably fits 63 bits, else the HUGEINT form (False).
    """
    if plan.min_timestamp_us is not None:
        origin = plan.min_timestamp_us // width_us * width_us
    else:  # no metrics: an origin before any realistic timestamp (overflow raises, never wraps)
        origin = -((1 << 62) // width_us + 1) * width_us
    params = {"width": width_us, "origin": origin}
    t1, s0, s1 = plan.max_timestamp_us, plan.min_sequence, plan.max_sequence
    if t1 is None or s0 is None or s1 is None:
        return params, False
    offsets = min(width_us, t1 - origin + 1)  # (timestamp - bucket start) is below this
    span = s1 - s0 + 1
    if offsets * span >= 1 << 63:
        return params, False
    params.update(key_m=span, key_s0=s0)
    return params, True


def _ohlcv_table(raw: pa.Table, method: exact.NotionalMethod) -> pa.Table:
    if raw.num_rows == 0:
        return OHLCV_SCHEMA.empty_table()
    notional, volume = sql.aggregate_sums(raw, method)
    vwap = [exact.vwap_unscaled(n, v) for n, v in zip(notional, volume, strict=True)]
    columns = {
        "bucket": raw.column("bucket_us").cast(_UTC_US),
        "open": raw.column("open"),
        "high": raw.column("high"),
        "low": raw.column("low"),
        "close": raw.column("close"),
        "volume": exact.decimal_array(volume, "volume"),
        "trades": raw.column("trades"),
        "vwap": exact.decimal_array(vwap, "vwap"),
    }
    return pa.table([columns[f.name] for f in OHLCV_SCHEMA], schema=OHLCV_SCHEMA)
