"""Scan planning: which Parquet files a query reads, decided by pyiceberg and cached per snapshot.

The query's filters become an Iceberg row filter, so ``plan_files()`` prunes by partition (day of
``timestamp``, ``symbol``) and by the column metrics of each data file (min/max of ``timestamp``,
``exchange``, ``instrument``, ...; a file written before a column existed has no metrics for it and
is kept). The result, a :class:`ScanPlan`, is cached under (snapshot id, filter): a
snapshot is immutable, so its plan never goes stale; a new snapshot gets new plans and the old
ones are dropped. Planning never reads data; DuckDB reads only the planned files.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
    Or,
)
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table

from k2.errors import QueryError, SnapshotExpired
from k2.query.files import data_path

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _predicate(kind: type[BooleanExpression], column: str, value: object) -> BooleanExpression:
    # The pydantic mypy plugin types these predicates by their fields; they are built as (term, literal)
    # (unary ones such as IsNull by the term alone: ``value`` None).
    factory: Any = kind
    return cast(BooleanExpression, factory(column) if value is None else factory(column, value))


# The time columns a filter may use, as quoted SQL identifiers (chosen from this fixed set, never spliced input).
_TIME_COLUMNS = {c: f'"{c}"' for c in ("timestamp", "ingestion_timestamp", "detected_at")}


@dataclass(frozen=True, slots=True)
class ScanFilter:
    """What a query selects: all fields optional; ``start_us`` inclusive, ``end_us`` exclusive, on
    ``time_column`` (trades: the exchange's ``timestamp``; quotes: ``ingestion_timestamp``).

    ``instrument`` (canonical ``BASE/QUOTE``) selects every venue's rows of it. Rows stored before
    the ``instrument`` column existed hold null there; ``legacy`` names them: the ``EXCHANGE:SYMBOL``
    of every venue whose symbol rules give that instrument (:func:`k2.sources.instruments.legacy_keys`),
    so an old row of one of those symbols is selected too."""

    symbol: str | None = None
    exchange: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    time_column: str = "timestamp"
    instrument: str | None = None
    legacy: tuple[str, ...] = ()

    def row_filter(self, columns: Collection[str] = ("instrument",)) -> BooleanExpression:
        """The same filter as an Iceberg expression (drives partition and metrics pruning); ``columns``:
        the table's, so a table not evolved yet (no ``instrument``) is asked for the legacy rows only."""
        parts: list[BooleanExpression] = []
        if self.symbol is not None:
            parts.append(_predicate(EqualTo, "symbol", self.symbol))
        if self.exchange is not None:
            parts.append(_predicate(EqualTo, "exchange", self.exchange))
        if self.instrument is not None:
            parts.append(self._instrument_filter("instrument" in columns))
        if self.start_us is not None:
            parts.append(_predicate(GreaterThanOrEqual, self.time_column, self.start_us))
        if self.end_us is not None:
            parts.append(_predicate(LessThan, self.time_column, self.end_us))
        if not parts:
            return AlwaysTrue()
        return parts[0] if len(parts) == 1 else And(*parts)

    def _instrument_filter(self, has_column: bool) -> BooleanExpression:
        old: BooleanExpression = AlwaysFalse()
        for key in self.legacy:
            exchange, _, symbol = key.partition(":")
            pair = And(_predicate(EqualTo, "exchange", exchange), _predicate(EqualTo, "symbol", symbol))
            old = pair if isinstance(old, AlwaysFalse) else Or(old, pair)
        if not has_column:
            return old
        new = _predicate(EqualTo, "instrument", self.instrument)
        missing = _predicate(IsNull, "instrument", None)
        return new if isinstance(old, AlwaysFalse) else Or(new, And(missing, old))

    def predicates(self) -> dict[str, tuple[str, dict[str, object]]]:
        """Each predicate of the filter by name: (SQL fragment with named parameters, their values)."""
        found: dict[str, tuple[str, dict[str, object]]] = {}
        if self.symbol is not None:
            found["symbol"] = ("symbol = $symbol", {"symbol": self.symbol})
        if self.exchange is not None:
            found["exchange"] = ("exchange = $exchange", {"exchange": self.exchange})
        if self.instrument is not None:
            if self.legacy:
                fragment = (
                    "(instrument = $instrument OR (instrument IS NULL AND "
                    "list_contains($instrument_legacy, exchange || ':' || symbol)))"
                )
                params: dict[str, object] = {"instrument": self.instrument, "instrument_legacy": list(self.legacy)}
                found["instrument"] = (fragment, params)
            else:
                found["instrument"] = ("instrument = $instrument", {"instrument": self.instrument})
        column = _TIME_COLUMNS[self.time_column]
        if self.start_us is not None:
            found["start_time"] = (f"{column} >= $start_time", {"start_time": from_us(self.start_us)})
        if self.end_us is not None:
            found["end_time"] = (f"{column} < $end_time", {"end_time": from_us(self.end_us)})
        return found

    def sql_where(self, skip: Collection[str] = ()) -> tuple[str, dict[str, object]]:
        """A WHERE clause of fixed fragments and the named parameters it binds, minus ``skip``."""
        kept = {name: p for name, p in self.predicates().items() if name not in skip}
        where = " AND ".join(fragment for fragment, _ in kept.values()) or "true"
        return where, {k: v for _, params in kept.values() for k, v in params.items()}


def from_us(us: int) -> datetime:
    """UTC datetime of a microsecond timestamp (exact)."""
    return EPOCH + timedelta(microseconds=us)


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integer arithmetic)."""
    return (value - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The data files one query reads, with what their metadata says about them."""

    snapshot_id: int | None
    filter: ScanFilter
    files: tuple[str, ...]  # as DuckDB reads them (k2.query.files.data_path), in planning order
    rows: int  # records in the planned files: an upper bound on the rows the query reads
    bytes: int
    max_file_rows: int
    # Largest |unscaled value| of price and quantity in the planned files (column metrics);
    # None when some file has no bounds for the column (or the table has no such column).
    max_abs_price: int | None
    max_abs_quantity: int | None
    min_timestamp_us: int | None  # of the filter's time column
    max_timestamp_us: int | None
    # Range of source_sequence (None when unknown or when a file has only nulls in it).
    min_sequence: int | None
    max_sequence: int | None
    single_symbol_files: tuple[tuple[str, str], ...]  # (path, symbol) of files holding one symbol
    # The filter's predicates (see ScanFilter.predicates) that the metrics prove every row of every
    # planned file passes (e.g. the time range of a whole-day query on day partitions): DuckDB
    # does not re-check them.
    implied: frozenset[str]

    @property
    def filter_implied(self) -> bool:
        """True when no predicate is left for DuckDB to check."""
        return self.implied >= self.filter.predicates().keys()

    def sql_where(self) -> tuple[str, dict[str, object]]:
        """The WHERE clause DuckDB still has to apply (``true`` when the plan implies the filter)."""
        return self.filter.sql_where(skip=self.implied)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    entries: int
    snapshot_id: int | None


def _decimal_bound(raw: bytes | None) -> int | None:
    """Iceberg single-value form of a decimal: big-endian two's-complement unscaled integer."""
    return None if raw is None else int.from_bytes(raw, "big", signed=True)


def _long_bound(raw: bytes | None) -> int | None:
    """Iceberg single-value form of a long/timestamp: 8-byte little-endian."""
    return None if raw is None else int.from_bytes(raw, "little", signed=True)


class Planner:
    """Plans scans of one table, with an LRU cache of plans for its current snapshot. Thread-safe.

    Works for any table with ``symbol``, ``exchange`` and the filters' time column; the price and
    quantity bounds (exact VWAP's overflow analysis) and the ``source_sequence`` range are taken
    when the table has those columns.
    """

    def __init__(self, table: Table, max_entries: int = 256) -> None:
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[int | None, ScanFilter], ScanPlan] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._table = table
        self._snapshot_id = self._current_snapshot_id(table)
        self._index(table)

    def _index(self, table: Table) -> None:
        """The field ids the planner reads metrics by (again after a reload: the schema may have evolved)."""
        ids = {f.name: f.field_id for f in table.schema().fields}
        self._price_id = ids.get("price", -1)
        self._quantity_id = ids.get("quantity", -1)
        self._time_ids = {name: ids[name] for name in _TIME_COLUMNS if name in ids}
        self._symbol_id = ids["symbol"]
        self._exchange_id = ids["exchange"]
        self._instrument_id = ids.get("instrument", -1)
        self._columns = frozenset(ids)
        self._sequence_id = ids.get("source_sequence", -1)

    @staticmethod
    def _current_snapshot_id(table: Table) -> int | None:
        snapshot = table.current_snapshot()
        return None if snapshot is None else snapshot.snapshot_id

    @property
    def table(self) -> Table:
        return self._table

    @property
    def snapshot_id(self) -> int | None:
        return self._snapshot_id

    def set_table(self, table: Table) -> bool:
        """Switch to a reloaded table; drops cached plans when its snapshot changed. True if it did."""
        snapshot_id = self._current_snapshot_id(table)
        with self._lock:
            self._table = table
            self._index(table)
            changed = snapshot_id != self._snapshot_id
            if changed:
                self._snapshot_id = snapshot_id
                self._cache.clear()
            return changed

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._snapshot_id)

    def plan(self, flt: ScanFilter) -> ScanPlan:
        """The plan of ``flt`` on the current snapshot, from the cache when it was planned before."""
        with self._lock:
            table, snapshot_id = self._table, self._snapshot_id
            key = (snapshot_id, flt)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return cached
            self._misses += 1
        plan = self._plan(table, snapshot_id, flt)
        with self._lock:
            if snapshot_id == self._snapshot_id:
                self._cache[key] = plan
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)
        return plan

    def _plan(self, table: Table, snapshot_id: int | None, flt: ScanFilter) -> ScanPlan:
        if snapshot_id is None:
            return ScanPlan(None, flt, (), 0, 0, 0, 0, 0, None, None, None, None, (), frozenset(flt.predicates()))
        try:
            tasks = self._tasks(table, snapshot_id, flt)
        except FileNotFoundError as exc:  # a manifest list or manifest of an expired snapshot
            raise SnapshotExpired(
                f"snapshot {snapshot_id} of {'.'.join(table.name())} was expired by table maintenance while "
                f"this query planned it ({exc}); retry against the current snapshot"
            ) from exc
        except Exception as exc:  # pyiceberg / IO errors: translate at the edge
            raise QueryError(f"cannot plan the scan: {exc}") from exc
        files: list[str] = []
        rows = size = max_rows = 0
        max_price: int | None = 0
        max_qty: int | None = 0
        ts_min: int | None = None
        ts_max: int | None = None
        seq_min: int | None = None
        seq_max: int | None = None
        seq_known = ts_known = True
        single: list[tuple[str, str]] = []
        implied = set(flt.predicates())
        time_id = self._time_id(flt)
        for task in tasks:
            if task.delete_files:
                raise QueryError(
                    f"data file {task.file.file_path} has {len(task.delete_files)} delete file(s): "
                    "K2's engine reads append-only tables and will not return rows that may be deleted"
                )
            data = task.file
            path = data_path(data.file_path)
            files.append(path)
            rows += data.record_count
            size += data.file_size_in_bytes
            max_rows = max(max_rows, data.record_count)
            lower, upper = data.lower_bounds or {}, data.upper_bounds or {}
            max_price = _max_abs(max_price, lower.get(self._price_id), upper.get(self._price_id))
            max_qty = _max_abs(max_qty, lower.get(self._quantity_id), upper.get(self._quantity_id))
            lo, hi = _long_bound(lower.get(time_id)), _long_bound(upper.get(time_id))
            if lo is None or hi is None:
                ts_known = False
            else:
                ts_min = lo if ts_min is None else min(ts_min, lo)
                ts_max = hi if ts_max is None else max(ts_max, hi)
            lo, hi = _long_bound(lower.get(self._sequence_id)), _long_bound(upper.get(self._sequence_id))
            if lo is None or hi is None:
                seq_known = False
            else:
                seq_min = lo if seq_min is None else min(seq_min, lo)
                seq_max = hi if seq_max is None else max(seq_max, hi)
            sym_lo, sym_hi = lower.get(self._symbol_id), upper.get(self._symbol_id)
            # Equal bounds are exact (a truncated upper bound is incremented, so it never equals the lower).
            if sym_lo is not None and sym_lo == sym_hi:
                single.append((path, sym_lo.decode()))
            implied &= self._within(data, flt)
        return ScanPlan(
            snapshot_id,
            flt,
            tuple(files),
            rows,
            size,
            max_rows,
            max_price,
            max_qty,
            ts_min if ts_known else None,
            ts_max if ts_known else None,
            seq_min if seq_known else None,
            seq_max if seq_known else None,
            tuple(single),
            frozenset(implied),
        )

    def _tasks(self, table: Table, snapshot_id: int, flt: ScanFilter) -> list[FileScanTask]:
        """The files pyiceberg plans for ``flt``.

        By instrument, on a table holding rows from before the ``instrument`` column: two passes, since
        pyiceberg's metrics evaluator keeps every file without metrics for a column (it cannot tell a
        file written before the column existed, whose rows all hold null there). Pass one plans by
        ``instrument = X`` and keeps the files that have the column; pass two plans by the venue symbols
        of old rows (``legacy``) and keeps the files that may hold null instruments. A file "has the
        column" when its value counts name it: K2 records metrics for every column of its tables.
        """

        def scan(expr: BooleanExpression) -> list[FileScanTask]:
            return list(table.scan(row_filter=expr, snapshot_id=snapshot_id).plan_files())

        if flt.instrument is None or not flt.legacy or "instrument" not in self._columns:
            return scan(flt.row_filter(self._columns))
        field_id = self._instrument_id
        new = [
            t for t in scan(replace(flt, legacy=()).row_filter(self._columns))
            if not t.file.value_counts or field_id in t.file.value_counts
        ]  # fmt: skip
        seen = {t.file.file_path for t in new}
        old = [
            t for t in scan(flt.row_filter(self._columns - {"instrument"}))
            if t.file.file_path not in seen and (t.file.null_value_counts or {}).get(field_id) != 0
        ]  # fmt: skip
        return new + old

    def _time_id(self, flt: ScanFilter) -> int:
        field_id = self._time_ids.get(flt.time_column)
        if field_id is None:
            raise QueryError(f"table {self._table.name()} has no time column {flt.time_column!r}")
        return field_id

    def _within(self, data: DataFile, flt: ScanFilter) -> set[str]:
        """The predicates of ``flt`` that the file's metrics prove all of its rows pass."""
        lower, upper = data.lower_bounds or {}, data.upper_bounds or {}
        nulls = data.null_value_counts or {}
        proven: set[str] = set()
        for name, field_id, wanted in (
            ("symbol", self._symbol_id, flt.symbol),
            ("exchange", self._exchange_id, flt.exchange),
            ("instrument", self._instrument_id, flt.instrument),
        ):
            raw = None if wanted is None else wanted.encode()
            if raw is not None and lower.get(field_id) == raw == upper.get(field_id) and nulls.get(field_id) == 0:
                proven.add(name)
        time_id = self._time_id(flt)
        lo = _long_bound(lower.get(time_id))
        hi = _long_bound(upper.get(time_id))
        if lo is not None and hi is not None and nulls.get(time_id) == 0:
            if flt.start_us is not None and lo >= flt.start_us:
                proven.add("start_time")
            if flt.end_us is not None and hi < flt.end_us:
                proven.add("end_time")
        return proven


def _max_abs(current: int | None, lower: bytes | None, upper: bytes | None) -> int | None:
    lo, hi = _decimal_bound(lower), _decimal_bound(upper)
    if current is None or lo is None or hi is None:
        return None
    return max(current, abs(lo), abs(hi))
