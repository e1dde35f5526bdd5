"""Time-ordered datasets served page by page: the generic part of ``GET /v1/trades``, ``/v1/quotes``
and ``/v1/asof``.

A :class:`Series` names a dataset, its row model (for OpenAPI), its Arrow schema, its *key* (the total
order pages follow) and how to plan its files. :func:`open_page` runs the keyset pagination for any
series; :func:`k2.api.tables.series_route` turns a series into a route with filters, formats and cursors.

**Why a key, and which.** A page ends at the ``limit``-th row in key order; the cursor is that row's
key, and the next page starts strictly after it. The key must be unique and must never change for a
row, whatever is committed or compacted meanwhile, so it is built from the trade itself:
``(timestamp, exchange, symbol, source_sequence, trade_id)`` (``source_sequence`` NULLS LAST, and
``trade_id`` breaks the remaining ties; (exchange, symbol, trade_id) is unique after dedup). Quotes
follow ``(ingestion_timestamp, exchange, symbol, source_sequence, message_id)``: their time is the
receive time (Binance quotes carry no exchange time), and ``message_id`` (derived from the venue's
update id, which dedup keeps unique) breaks ties.
``platform_sequence`` is not a usable key: each `k2 ingest` process numbers its own rows, so two
venues' processes overlap, and commit order is not sequence order across Kafka partitions.
Consequence, documented in docs/api.md: a page never repeats or skips a row that existed when the
previous page was read; a row committed later with an older timestamp (a backfilled gap) appears in
a later query of that range, not behind a cursor that already passed it.

**How a page is read.** One query over the key columns only finds the ``limit``-th row (and whether
one more exists): its key bounds the page and becomes ``next_cursor``, known before the first byte is
sent (so it can go in a header for CSV/Arrow/Parquet too). The full-width query then streams exactly
the rows between the two keys, ordered, through DuckDB's record-batch reader. Finding that row first
tries small time windows after the page's start (:meth:`Probe.windows`): without an end time the
bound query would otherwise order every later row of the selection.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel

from k2.api.params import Selection
from k2.api.workers import Worker
from k2.errors import QueryError
from k2.query import sql
from k2.query.filters import make_filter
from k2.query.planner import ScanPlan, from_us, to_us
from k2.query.quotes import QUOTE_ARROW_SCHEMA
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind, spec

_TEXT_KEY = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


@dataclass(frozen=True)
class KeyPart:
    """One column of a series' key: a SQL expression (a code constant) and its value kind."""

    expr: str
    kind: Literal["timestamp", "text", "int"]


@dataclass(frozen=True)
class Series:
    """A dataset served as pages in key order (see the module docstring)."""

    name: str
    row_model: type[BaseModel]
    page_model: type[BaseModel]
    schema: pa.Schema
    key: tuple[KeyPart, ...]  # the first part is the time column the range filters
    kind: RecordKind  # the table read
    description: str


def plan_of(worker: Worker, kind: RecordKind, sel: Selection) -> ScanPlan | None:
    """The files of ``kind``'s table holding ``sel``'s rows (None while the table does not exist),
    the time range on the kind's time column (trades: ``timestamp``; quotes: ``ingestion_timestamp``)."""
    planner = worker.engine.planner(kind)
    if planner is None:
        return None
    return planner.plan(
        make_filter(sel.symbol, sel.exchange, sel.start, sel.end, spec(kind).time_column, sel.instrument)
    )


_MAX_SEQUENCE = str(2**63 - 1)

TRADE_KEY = (
    KeyPart('"timestamp"', "timestamp"),
    KeyPart("exchange", "text"),
    KeyPart("symbol", "text"),
    KeyPart(f"coalesce(source_sequence, {_MAX_SEQUENCE})", "int"),
    KeyPart("trade_id", "text"),
)


QUOTE_KEY = (
    KeyPart("ingestion_timestamp", "timestamp"),
    KeyPart("exchange", "text"),
    KeyPart("symbol", "text"),
    KeyPart(f"coalesce(source_sequence, {_MAX_SEQUENCE})", "int"),
    KeyPart("message_id", "text"),
)


def trades_series(row_model: type[BaseModel], page_model: type[BaseModel], name: str = "trades") -> Series:
    return Series(
        name=name,
        row_model=row_model,
        page_model=page_model,
        schema=TRADE_ARROW_SCHEMA,
        key=TRADE_KEY,
        kind=RecordKind.TRADES,
        description="Trades in time order (then exchange, symbol, the venue's sequence), page by page.",
    )


def quotes_series(row_model: type[BaseModel], page_model: type[BaseModel]) -> Series:
    return Series(
        name="quotes",
        row_model=row_model,
        page_model=page_model,
        schema=QUOTE_ARROW_SCHEMA,
        key=QUOTE_KEY,
        kind=RecordKind.QUOTES,
        description=(
            "Quotes (best bid and offer) in receive order (then exchange, symbol, the venue's update id), "
            "page by page; `start`/`end` select on the receive time (`ingestion_timestamp`)."
        ),
    )


# --- cursors ----------------------------------------------------------------------------------------
def encode_cursor(series: Series, key: tuple[Any, ...]) -> str:
    """An opaque, URL-safe cursor: the series name and the key of the last row of a page."""
    values = [to_us(v) if part.kind == "timestamp" else v for part, v in zip(series.key, key, strict=True)]
    raw = json.dumps({"d": series.name, "k": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(series: Series, cursor: str) -> tuple[Any, ...]:
    """The key in ``cursor``, checked value by value (QueryError when it is not one of ours)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise QueryError("invalid cursor: pass the next_cursor of a previous page unchanged") from exc
    if not isinstance(data, dict) or data.get("d") != series.name or not isinstance(data.get("k"), list):
        raise QueryError(f"invalid cursor: not a cursor of {series.name}")
    values = data["k"]
    if len(values) != len(series.key):
        raise QueryError("invalid cursor: wrong length")
    out: list[Any] = []
    for part, value in zip(series.key, values, strict=True):
        if part.kind in ("timestamp", "int"):
            if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
                raise QueryError("invalid cursor: bad value")
            out.append(_from_us(value) if part.kind == "timestamp" else value)
        elif not isinstance(value, str) or not _TEXT_KEY.match(value):
            raise QueryError("invalid cursor: bad value")
        else:
            out.append(value)
    return tuple(out)


def _from_us(us: int) -> datetime:
    try:
        return from_us(us)
    except OverflowError as exc:
        raise QueryError("invalid cursor: bad value") from exc


# --- pages ----------------------------------------------------------------------------------------
@dataclass
class Page:
    reader: pa.RecordBatchReader | None  # None: nothing matched
    next_key: tuple[Any, ...] | None
    windows: int = 0  # time windows the bound was looked for in (see Probe.windows)
    unbounded: bool = False  # the bound was looked for over every planned row


@dataclass(frozen=True)
class Probe:
    """How :func:`open_page` sizes the time windows it looks for a page's bound in (see :meth:`windows`)."""

    rows: int = 4  # the first window should hold about rows × (limit + 1) rows at the plan's mean rate
    growth: int = 8  # each next window is this many times wider
    tries: int = 3  # windows tried before the query over every planned row

    def windows(self, plan: ScanPlan, start: datetime | None, end: datetime | None, limit: int) -> list[int]:
        """End-exclusive time bounds (µs) of the windows ``[start, bound)`` to look for a page's bound in.

        Why: the ``limit``-th row of a selection with no end is found by ordering every later row (~100 ms
        for a 1,000-row page from a random minute of a 10M-row table); a window holding a few pages' worth
        of rows orders only those. The first window is sized from the plan's metadata (its rows over its
        time span: a mean rate, an over-estimate for one symbol of many-symbol files, so the window may
        have to widen). No windows when the metadata says nothing, nor once a window would reach past the
        planned rows' last time (or the selection's end): that window is the whole query.
        """
        first, last = plan.min_timestamp_us, plan.max_timestamp_us
        if first is None or last is None or plan.rows <= 0 or self.tries <= 0:
            return []
        low = first if start is None else max(first, to_us(start))
        stop = last + 1 if end is None else min(last + 1, to_us(end))
        width = max(1, -(-self.rows * (limit + 1) * (last - first + 1) // plan.rows))  # ceiling division
        bounds = []
        for _ in range(self.tries):
            if low + width >= stop:
                break
            bounds.append(low + width)
            width *= max(2, self.growth)
        return bounds


PROBE = Probe()


def _key_clause(series: Series, prefix: str, op: str) -> tuple[str, list[str]]:
    names = [f"{prefix}{i}" for i in range(len(series.key))]
    exprs = ", ".join(p.expr for p in series.key)
    params = ", ".join(f"${n}" for n in names)
    first = series.key[0].expr
    lead = ">=" if op == ">" else "<="
    return f" AND {first} {lead} ${names[0]} AND ({exprs}) {op} ({params})", names


def json_projection(schema: pa.Schema) -> str:
    """A select item rendering each row as its JSON object in DuckDB (C++, all cores): decimals as
    exact text, zoned timestamps as RFC 3339 UTC with microseconds, maps as objects."""
    items = []
    for f in schema:
        col = sql.quote_ident(f.name)
        if pa.types.is_decimal(f.type):
            value = f"CAST({col} AS VARCHAR)"
        elif pa.types.is_timestamp(f.type) and f.type.tz is not None:
            value = f"strftime({col}, '%Y-%m-%dT%H:%M:%S.%fZ')"
        else:
            value = col
        items.append(f"'{f.name}': {value}")
    return "to_json({" + ", ".join(items) + "}) AS row_json"


JSON_ROW_SCHEMA = pa.schema([pa.field("row_json", pa.string())])


def open_page(
    worker: Worker,
    series: Series,
    sel: Selection,
    after: tuple[Any, ...] | None,
    limit: int,
    batch_rows: int,
    json_rows: bool = False,
    probe: Probe = PROBE,
) -> Page:
    """Plan, bound and open one page of ``series`` (runs in a worker thread); with ``json_rows`` the
    reader yields each row's JSON text (:func:`json_projection`) instead of the columns; ``probe``
    sizes the time windows the page's bound is looked for in first (``Probe(tries=0)``: none)."""
    if after is not None and (sel.start is None or after[0] > sel.start):
        sel = sel.from_start(after[0])  # prune files before the cursor
    if sel.empty:
        return Page(None, None)
    plan = plan_of(worker, series.kind, sel)
    if plan is None or not plan.files:
        return Page(None, None)
    page = Page(None, None)
    bound: list[tuple[Any, ...]] = []
    if plan.rows > limit:  # metadata says the page may not hold everything: find its last row
        bound = _bound(worker, series, sel, plan, after, limit, probe, page)
    where, params = _where(series, plan, after)
    if bound:
        clause, names = _key_clause(series, "u", "<=")
        where += clause
        params.update(zip(names, bound[0], strict=True))
        if len(bound) == 2:
            page.next_key = tuple(bound[0])
    columns = json_projection(series.schema) if json_rows else ", ".join(sql.quote_ident(f.name) for f in series.schema)
    order = ", ".join(p.expr for p in series.key)
    source = sql.parquet_source(series.schema)  # by field id: files from before a column read it as null
    text = f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order}"  # noqa: S608
    page.reader = worker.con.sql(text, params=params).to_arrow_reader(batch_rows)
    return page


def _where(series: Series, plan: ScanPlan, after: tuple[Any, ...] | None) -> tuple[str, dict[str, object]]:
    """The WHERE clause and parameters of ``plan``'s rows after the cursor's key."""
    where, params = plan.sql_where()
    params["files"] = list(plan.files)
    if after is not None:
        clause, names = _key_clause(series, "c", ">")
        where += clause
        params.update(zip(names, after, strict=True))
    return where, params


def _bound(
    worker: Worker,
    series: Series,
    sel: Selection,
    plan: ScanPlan,
    after: tuple[Any, ...] | None,
    limit: int,
    probe: Probe,
    page: Page,
) -> list[tuple[Any, ...]]:
    """The keys of the ``limit``-th and ``(limit+1)``-th rows in key order (fewer at the end), looked
    for in each of ``probe``'s windows (the selection up to a time, planned: only its files are read)
    before over every planned row.

    Why a window's answer is exact: the key starts with the time column (the one the plan's end bounds,
    end-exclusive), so every row with time < T comes before every row with time >= T. The window's rows
    in key order are therefore the first rows of the whole selection's, and when the window holds a
    (limit+1)-th row, that row and the one before are the same as the whole query's. Rows tied on time
    at T are all outside the window, none split across it. A window with fewer rows proves nothing
    (the next page may start after it): try the next.
    """
    aliases = ", ".join(f"{p.expr} AS k{i}" for i, p in enumerate(series.key))
    order = ", ".join(p.expr for p in series.key)
    source = sql.parquet_source(series.schema)

    def run(scan: ScanPlan) -> list[tuple[Any, ...]]:
        where, params = _where(series, scan, after)
        text = f"SELECT {aliases} FROM {source} WHERE {where} ORDER BY {order} LIMIT 2 OFFSET $offset"  # noqa: S608
        return worker.con.execute(text, {**params, "offset": limit - 1}).fetchall()

    for end in probe.windows(plan, sel.start, sel.end, limit):
        page.windows += 1
        window = plan_of(worker, series.kind, replace(sel, end=from_us(end)))
        if window is not None and window.files and len(rows := run(window)) == 2:
            return rows
    page.unbounded = True
    return run(plan)


def cursor_headers(path: str, query: Mapping[str, str], cursor: str | None) -> dict[str, str]:
    """``K2-Next-Cursor`` and an RFC 8288 ``Link: <...>; rel="next"`` for the next page."""
    if cursor is None:
        return {}
    from urllib.parse import urlencode

    params = {k: v for k, v in query.items() if k != "cursor"} | {"cursor": cursor}
    return {"K2-Next-Cursor": cursor, "Link": f'<{path}?{urlencode(params)}>; rel="next"'}
