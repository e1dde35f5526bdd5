"""QueryEngine: trades, OHLCV bars, exact VWAP, quotes, spreads, the trade-quote as-of join and
read-only SQL over K2's Iceberg tables.

pyiceberg plans which data files a query needs (partition and column-metrics pruning, cached per
snapshot, see :mod:`k2.query.planner`); DuckDB reads exactly those Parquet files with the query's
filters bound as parameters, from the local warehouse or from S3 (:mod:`k2.query.files`). Nothing
materialises the whole table. See docs/query.md.

Times: arguments must be timezone-aware (any zone; converted to UTC); naive datetimes are rejected
with QueryError. ``start_time`` is inclusive, ``end_time`` exclusive. Results carry
``timestamp[us, tz=UTC]`` and ``decimal128(38, 12)`` columns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2.config import K2Settings, LakeSettings
from k2.errors import K2Error, QueryError, SnapshotExpired
from k2.lake.catalog import load_existing_table, load_or_create_table, open_catalog, table_identifier
from k2.logging import get_logger
from k2.metrics import QUERY_SECONDS
from k2.query import exact, files, quotes, sql
from k2.query.bars import bar_parameters, ohlcv_table, parse_interval
from k2.query.cache import ResultCache
from k2.query.filters import check_limit, make_filter
from k2.query.instruments import fill_instruments
from k2.query.planner import CacheInfo, Planner, ScanFilter, ScanPlan, from_us
from k2.query.result import QueryResult
from k2.schema import TRADE_ARROW_SCHEMA, to_arrow
from k2.schema.kinds import RecordKind, spec

log = get_logger(__name__)

T = TypeVar("T")

_OTHER_KINDS = (RecordKind.QUOTES, RecordKind.QUALITY_EVENTS)  # tables read when they exist


class QueryEngine:
    """Queries over K2's tables. Thread-safe (one DuckDB connection, used under a lock).

    The trades table is the engine's main table (created when missing); the quotes and
    quality-events tables are read when they exist (queries of a kind whose table does not exist
    yet see no rows). ``refresh_interval_s``: reload table metadata (to see new snapshots) when the
    last load is older than this before a query; ``None`` reloads only on :meth:`refresh`.
    """

    def __init__(
        self,
        catalog: Catalog,
        lake: LakeSettings,
        *,
        refresh_interval_s: float | None = 1.0,
        plan_cache_size: int = 256,
        connection: duckdb.DuckDBPyConnection | None = None,
        results: ResultCache | None = None,
    ) -> None:
        self._catalog = catalog
        self._lake = lake
        self._identifier = table_identifier(lake, RecordKind.TRADES)
        self._name = ".".join(self._identifier)
        self._refresh_interval_s = refresh_interval_s
        self._plan_cache_size = plan_cache_size
        self._lock = threading.RLock()
        try:
            table = load_or_create_table(catalog, lake, RecordKind.TRADES, evolve=False)  # a reader writes nothing
        except K2Error:
            raise
        except Exception as exc:
            raise QueryError(f"cannot load table {self._name}: {exc}") from exc
        self._loaded_at = time.monotonic()
        self._planner = Planner(table, plan_cache_size)
        self._others: dict[RecordKind, Planner | None] = dict.fromkeys(_OTHER_KINDS)
        self._load_others()
        # ``connection``: a cursor of a connection from sql.open_connection (the REST API's workers share
        # one locked-down database); the engine owns (and closes) it either way. Otherwise DuckDB may read
        # the namespace's directory or S3 prefix (every K2 table of the warehouse) and nothing else.
        if connection is None:
            store = files.data_store(table)
            connection = sql.open_connection(store.root, filesystem=store.filesystem)
        self._con = connection
        self._views: dict[RecordKind, int | None] = {}  # kind -> the snapshot its view points at
        self._owned_catalog: Catalog | None = None  # closed with the engine (see from_settings)
        self._symbols: tuple[int | None, list[str]] | None = None
        # Aggregates per snapshot (k2.query.cache), shared with other engines of the process if given.
        self._results = results if results is not None else ResultCache(0)

    @classmethod
    def from_settings(cls, settings: K2Settings) -> QueryEngine:
        """An engine on the configured warehouse, whose trades table must exist: reading creates
        nothing (:class:`~k2.errors.LakeError` naming the warehouse otherwise). It owns its catalog:
        :meth:`close` closes the catalog's database connections too (PostgreSQL in distributed mode)."""
        lake = settings.lake
        catalog = open_catalog(lake, create=False)
        try:
            load_existing_table(catalog, lake, lake.trades_table)
            engine = cls(catalog, lake)
        except BaseException:
            _dispose(catalog)
            raise
        engine._owned_catalog = catalog
        return engine

    def close(self) -> None:
        with self._lock:
            self._con.close()
            if self._owned_catalog is not None:
                _dispose(self._owned_catalog)
                self._owned_catalog = None

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
        """Reload the tables' metadata; a new snapshot gets new plans (the old ones are dropped)."""
        try:
            table = self._catalog.load_table(self._identifier)
        except Exception as exc:
            raise QueryError(f"cannot reload table {self._name}: {exc}") from exc
        with self._lock:
            if self._planner.set_table(table):
                log.debug("query.snapshot_changed", table=self._name, snapshot_id=self._planner.snapshot_id)
            self._load_others()
            self._loaded_at = time.monotonic()

    def _load_others(self) -> None:
        """(Re)load the quotes and quality-events tables that exist (a missing one stays None)."""
        for kind, planner in self._others.items():
            identifier = table_identifier(self._lake, kind)
            try:
                table = self._catalog.load_table(identifier)
            except NoSuchTableError:
                continue
            except Exception as exc:
                raise QueryError(f"cannot load table {'.'.join(identifier)}: {exc}") from exc
            if planner is None:
                self._others[kind] = Planner(table, self._plan_cache_size)
            else:
                planner.set_table(table)

    def planner(self, kind: RecordKind) -> Planner | None:
        """The planner of ``kind``'s table (None while that table does not exist)."""
        self._maybe_refresh()
        return self._planner if kind is RecordKind.TRADES else self._others.get(kind)

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
        instrument: str | None = None,
    ) -> ScanPlan:
        """The trade files a query with these filters reads (cached per snapshot and filter)."""
        self._maybe_refresh()
        return self._planner.plan(make_filter(symbol, exchange, start_time, end_time, instrument=instrument))

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
        instrument: str | None = None,
    ) -> QueryResult:
        """Trades in time order (then by the venue's sequence), at most ``limit`` (1..1,000,000);
        ``instrument`` (``BTC/USDT``) selects that instrument on every venue."""
        check_limit(limit)
        flt = make_filter(symbol, exchange, start_time, end_time, instrument=instrument)

        def build(plan: ScanPlan, where: str, params: dict[str, Any]) -> pa.Table:
            return self._first_rows(plan, where, params, limit, '"timestamp"', sql.trades_sql)

        with self._timed("trades"):
            table = self._on_plan(RecordKind.TRADES, flt, TRADE_ARROW_SCHEMA, build)
        return QueryResult(fill_instruments(table.cast(TRADE_ARROW_SCHEMA)))

    def ohlcv(
        self,
        symbol: str | None = None,
        interval: str = "1m",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        exchange: str | None = None,
        instrument: str | None = None,
    ) -> QueryResult:
        """Bars of ``interval`` (epoch-aligned buckets): open/high/low/close, volume, trades, vwap.

        Open/close are the first/last trade by (timestamp, source_sequence); volume and VWAP are
        exact (docs/query.md); VWAP is rounded half-even to 12 decimal places. By ``instrument``
        (``BTC/USDT``) the bars are per venue, side by side: an ``exchange`` column first, one row per
        bar per venue (:data:`k2.query.bars.VENUE_OHLCV_SCHEMA`).
        """
        if symbol is None and instrument is None:
            raise QueryError("ohlcv needs a symbol or an instrument")
        width_us = parse_interval(interval) // timedelta(microseconds=1)
        flt = make_filter(symbol, exchange, start_time, end_time, instrument=instrument)
        by_exchange = instrument is not None
        with self._timed("ohlcv"):
            raw, method = self._retrying(
                lambda: self._aggregate(flt, bucketed=True, width_us=width_us, by_exchange=by_exchange)
            )
            table = ohlcv_table(raw, method, by_exchange=by_exchange)
        return QueryResult(table)

    def vwap(
        self,
        symbol: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        exchange: str | None = None,
        instrument: str | None = None,
    ) -> Decimal | None:
        """Exact volume-weighted average price, rounded half-even to 12 places; None without trades. By
        ``instrument``: over every venue's trades of it (one price: the venues share the quote asset),
        or one venue's with ``exchange``."""
        if symbol is None and instrument is None:
            raise QueryError("vwap needs a symbol or an instrument")
        flt = make_filter(symbol, exchange, start_time, end_time, instrument=instrument)
        with self._timed("vwap"):
            raw, method = self._retrying(lambda: self._aggregate(flt, bucketed=False))
            if raw.num_rows == 0 or not raw.column("trades")[0].as_py():
                return None
            notional, volume = sql.aggregate_sums(raw, method)
            value = exact.vwap_unscaled(notional[0], volume[0])
        return None if value is None else exact.to_decimal(value)

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> QueryResult:
        """Run one read-only SELECT over the views ``trades``, ``quotes`` and ``quality_events`` (each
        the current snapshot's data files of its table; empty with the canonical columns when the
        table has no data yet).

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
                    self.ensure_views()
                    try:
                        return sql.run(self._con, text, params)
                    except duckdb.Error as exc:  # a file outside the tables is ReadOnlyViolation
                        raise files.translate(exc, self._name) from exc
                    except (TypeError, ValueError) as exc:
                        raise QueryError(f"query failed: {exc}") from exc

            table = self._retrying(attempt)
        return QueryResult(table)

    # --- quotes ---------------------------------------------------------------------------------------
    def query_quotes(
        self,
        symbol: str | None = None,
        exchange: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 1000,
        instrument: str | None = None,
    ) -> QueryResult:
        """Quotes (best bid/offer) in receive order, at most ``limit``; the time range is on
        ``ingestion_timestamp`` (Binance spot quotes carry no exchange time)."""
        check_limit(limit)
        flt = make_filter(symbol, exchange, start_time, end_time, "ingestion_timestamp", instrument)

        def build(plan: ScanPlan, where: str, params: dict[str, Any]) -> pa.Table:
            return self._first_rows(plan, where, params, limit, "ingestion_timestamp", quotes.quotes_sql)

        with self._timed("quotes"):
            table = self._on_plan(RecordKind.QUOTES, flt, quotes.QUOTE_ARROW_SCHEMA, build)
        return QueryResult(table.cast(quotes.QUOTE_ARROW_SCHEMA))

    def spread(
        self,
        symbol: str | None = None,
        exchange: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        instrument: str | None = None,
    ) -> QueryResult:
        """Spread statistics per exchange and symbol over the quotes received in the range
        (:data:`k2.query.quotes.SPREAD_SCHEMA`: min/max exact, means exact to 12 places); by
        ``instrument``: one row per venue quoting it."""
        flt = make_filter(symbol, exchange, start_time, end_time, "ingestion_timestamp", instrument)

        def build(plan: ScanPlan, where: str, params: dict[str, Any]) -> pa.Table:
            return quotes.spread_table(self._run(quotes.spread_sql(where), params))

        with self._timed("spread"):
            table = self._on_plan(RecordKind.QUOTES, flt, quotes.SPREAD_SCHEMA, build)
        return QueryResult(table)

    def trades_with_quotes(
        self,
        symbol: str | None = None,
        exchange: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 1000,
        tolerance: timedelta = timedelta(minutes=1),
        instrument: str | None = None,
    ) -> QueryResult:
        """Trades (as :meth:`query_trades` selects them) each with the quote prevailing when K2
        received it: the last quote of its exchange and symbol received before the trade, at most
        ``tolerance`` older (else null). Backfilled trades get no quote. See :mod:`k2.query.quotes`."""
        if not isinstance(tolerance, timedelta) or tolerance < timedelta(0):
            raise QueryError("tolerance must be a non-negative timedelta")
        trades = self.query_trades(symbol, exchange, start_time, end_time, limit, instrument).table
        return self.join_quotes(trades, tolerance, instrument)

    def join_quotes(
        self, trades: pa.Table, tolerance: timedelta = timedelta(minutes=1), instrument: str | None = None
    ) -> QueryResult:
        """``trades`` (canonical trade rows, e.g. a page the REST API read) each with its prevailing
        quote, as :meth:`trades_with_quotes` does; rows in time order. ``instrument``: the trades are
        that instrument's (the quotes planned are its venues')."""
        if not isinstance(tolerance, timedelta) or tolerance < timedelta(0):
            raise QueryError("tolerance must be a non-negative timedelta")
        tolerance_us = tolerance // timedelta(microseconds=1)
        with self._timed("trades_with_quotes"):
            table = self._retrying(lambda: self._as_of(trades.cast(TRADE_ARROW_SCHEMA), tolerance_us, instrument))
        return QueryResult(table)

    def _as_of(self, trades: pa.Table, tolerance_us: int, instrument: str | None) -> pa.Table:
        schema = pa.schema([*TRADE_ARROW_SCHEMA, *quotes.AS_OF_COLUMNS])
        planner = self._others[RecordKind.QUOTES]
        received = trades.column("ingestion_timestamp").cast(pa.int64())
        if trades.num_rows == 0 or planner is None:
            nulls = [pa.nulls(trades.num_rows, f.type) for f in quotes.AS_OF_COLUMNS]
            return pa.table([*trades.columns, *nulls], schema=schema)
        lo, hi = pc.min(received).as_py(), pc.max(received).as_py()
        symbols = pc.unique(trades.column("symbol")).to_pylist()
        one = symbols[0] if len(symbols) == 1 else None
        flt = make_filter(one, None, time_column="ingestion_timestamp", instrument=instrument)
        flt = replace(flt, start_us=lo - tolerance_us, end_us=hi)
        plan = planner.plan(flt)
        backfilled = pc.map_lookup(trades.column("vendor_data"), pa.scalar("backfilled"), "first")
        live = pc.invert(pc.fill_null(pc.equal(backfilled, "true"), False))
        if not plan.files:
            nulls = [pa.nulls(trades.num_rows, f.type) for f in quotes.AS_OF_COLUMNS]
            return pa.table([*trades.columns, *nulls], schema=schema)
        where, params = plan.sql_where()
        params.update(files=list(plan.files), tolerance_us=tolerance_us)
        with self._lock:
            self._con.register(quotes.AS_OF_TRADES, trades.append_column("k2_live", live))
            try:
                joined = self._run(quotes.as_of_sql(where), params)
            finally:
                self._con.unregister(quotes.AS_OF_TRADES)
        return joined.cast(schema)

    def symbols(self) -> list[str]:
        """Symbols present in the current snapshot, sorted (from file metrics where they are exact)."""
        self._maybe_refresh()
        plan = self._planner.plan(ScanFilter())
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
        plan = self._planner.plan(ScanFilter())
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

    def _on_plan(
        self, kind: RecordKind, flt: ScanFilter, empty: pa.Schema,
        build: Callable[[ScanPlan, str, dict[str, Any]], pa.Table],
    ) -> pa.Table:  # fmt: skip
        """``build(plan, where, params)`` on the plan of ``flt`` over ``kind``'s table (``params`` holding
        the filter's values and ``files``), retried once if a planned file vanished; an empty table of
        ``empty`` when the table does not exist or the plan has no file."""

        def attempt() -> pa.Table:
            planner = self._planner if kind is RecordKind.TRADES else self._others[kind]
            plan = None if planner is None else planner.plan(flt)
            if plan is None or not plan.files:
                return empty.empty_table()
            where, params = plan.sql_where()
            params["files"] = list(plan.files)
            return build(plan, where, params)

        return self._retrying(attempt)

    def _first_rows(
        self, plan: ScanPlan, where: str, params: dict[str, Any], limit: int, column: str,
        select_sql: Callable[[str], str],
    ) -> pa.Table:  # fmt: skip
        """``select_sql(where)``: the first ``limit`` rows in ``column`` order. When the plan holds
        more, first the ``column`` value of the ``limit``-th row, so the full-width query decodes
        only rows at or before it."""
        params["limit"] = limit
        if plan.rows > limit:
            cutoff = self._run(sql.cutoff_sql(where, column), params).column("cutoff")[0].as_py()
            if cutoff is not None:
                where += f" AND {column} <= $cutoff"
                params["cutoff"] = cutoff
        return self._run(select_sql(where), params)

    def _run(self, text: str, params: Mapping[str, Any]) -> pa.Table:
        with self._lock:
            try:
                table: pa.Table = sql.run(self._con, text, params)
            except duckdb.Error as exc:
                raise files.translate(exc, self._name) from exc
        return table

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` (which plans and queries); if a planned file vanished (table maintenance
        removed the files of the snapshot this engine held: :class:`SnapshotExpired`, from a local file
        or an S3 object, see :func:`k2.query.files.translate`), refresh and retry once on the current
        snapshot. A second failure raises that SnapshotExpired: a clear error, never partial rows."""
        self._maybe_refresh()
        try:
            return attempt()
        except SnapshotExpired as exc:
            log.warning("query.file_missing", table=self._name, error=str(exc))
            self.refresh()
            return attempt()

    def _aggregate(
        self, flt: ScanFilter, *, bucketed: bool, width_us: int = 0, by_exchange: bool = False
    ) -> tuple[pa.Table, exact.NotionalMethod]:
        plan = self._planner.plan(flt)
        method = exact.choose_method(plan.max_abs_price, plan.max_abs_quantity, len(plan.files), plan.max_file_rows)
        if not plan.files:
            return pa.table({"trades": pa.array([], pa.int64())}), method
        key = ("aggregate", plan.snapshot_id, plan.files, flt, bucketed, width_us, by_exchange)
        cached = self._results.get(key)
        if cached is not None:
            return cached, method
        where, params = plan.sql_where()
        params["files"] = list(plan.files)
        compact = False
        if bucketed:
            bucket_params, compact = bar_parameters(plan, width_us)
            params.update(bucket_params)
        if method.needs_row_numbers:
            params["chunk_rows"] = method.chunk_rows
        text = sql.aggregate_sql(where, method, bucketed=bucketed, compact_key=compact, by_exchange=by_exchange)
        result = self._run(text, params)
        self._results.put(key, result)
        return result, method

    def ensure_views(self) -> None:
        """Point this engine's (TEMP) views ``trades``, ``quotes`` and ``quality_events`` at their
        tables' current snapshot files (empty views for tables without data)."""
        with self._lock:
            for kind in (RecordKind.TRADES, *_OTHER_KINDS):
                planner = self._planner if kind is RecordKind.TRADES else self._others[kind]
                plan = None if planner is None else planner.plan(ScanFilter(time_column=spec(kind).time_column))
                snapshot = None if plan is None else plan.snapshot_id
                if kind in self._views and self._views[kind] == snapshot:
                    continue
                try:
                    sql.create_view(
                        self._con, kind.value, () if plan is None else plan.files, to_arrow(spec(kind).record)
                    )
                except duckdb.Error as exc:  # a planned file is gone: the caller refreshes and retries
                    raise files.translate(exc, self._name, f"cannot create the {kind.value} view") from exc
                self._views[kind] = snapshot


def _dispose(catalog: Catalog) -> None:
    """Close a SQL catalog's connection pool (SQLite, PostgreSQL); other catalogs hold none."""
    engine = getattr(catalog, "engine", None)
    if engine is not None:
        engine.dispose()
