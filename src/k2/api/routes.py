"""The data routes under /v1: trades (paged), OHLCV, VWAP, instruments, read-only SQL, completeness.

Each route validates its parameters (typed, so OpenAPI describes them), borrows a worker and either
returns a small JSON model or streams rows in the negotiated format (:mod:`k2.api.formats`).
"""

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import pyarrow as pa
from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from k2.api.formats import MEDIA_TYPES, Format, JsonEncoder, NotAcceptable, encoder, negotiate
from k2.api.keys import Scope
from k2.api.models import (
    Bar,
    BarList,
    Gap,
    GapList,
    Instrument,
    InstrumentList,
    QualityList,
    QualityRow,
    SqlRequest,
    SqlResult,
    Trade,
    TradePage,
    Vwap,
)
from k2.api.problems import Problem
from k2.api.queries import gaps, instruments, quality
from k2.api.security import require
from k2.api.series import (
    INSTRUMENT_PATTERN,
    JSON_ROW_SCHEMA,
    NAME_PATTERN,
    Page,
    Series,
    SeriesFilter,
    check_name,
    cursor_headers,
    decode_cursor,
    encode_cursor,
    open_page,
    trades_series,
)
from k2.api.service import service
from k2.api.streaming import Source
from k2.api.workers import Worker
from k2.errors import QueryError
from k2.query import sql as query_sql
from k2.query.bars import OHLCV_SCHEMA, VENUE_OHLCV_SCHEMA, parse_interval

TRADES = trades_series(Trade, TradePage)

SymbolParam = Annotated[str, Query(pattern=NAME_PATTERN, description="Exchange symbol, e.g. BTCUSDT.")]
OptSymbol = Annotated[str | None, Query(pattern=NAME_PATTERN, description="Exchange symbol, e.g. BTCUSDT.")]
OptExchange = Annotated[str | None, Query(pattern=NAME_PATTERN, description="Venue, e.g. BINANCE.")]
OptInstrument = Annotated[
    str | None,
    Query(
        pattern=INSTRUMENT_PATTERN,
        description="Canonical instrument BASE/QUOTE, e.g. BTC/USDT: every venue's symbol of it (instead of symbol).",
    ),
]
StartParam = Annotated[datetime | None, Query(description="Inclusive start, RFC 3339 (UTC when no offset is given).")]
EndParam = Annotated[datetime | None, Query(description="Exclusive end, RFC 3339 (UTC when no offset is given).")]
FormatParam = Annotated[
    Format | None,
    Query(alias="format", description="Response format; overrides the Accept header (json, csv, arrow, parquet)."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
# Every width this pattern admits is between 1 ms and 366 days (what the engine accepts).
INTERVAL_PATTERN = (
    r"^(?:[1-9][0-9]{0,9}ms|[1-9][0-9]{0,6}s|[1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h"
    r"|(?:[1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
)
DayParam = Annotated[date | None, Query(description="A UTC day, YYYY-MM-DD.")]

BATCH_ROWS = {Format.JSON: 8_192, Format.CSV: 16_384, Format.ARROW: 65_536, Format.PARQUET: 131_072}
_ERRORS: dict[int | str, dict[str, Any]] = {}  # filled by k2.api.app (the shared error responses)


def table_responses(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a route answering rows: the JSON model, and CSV/Arrow/Parquet bodies."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {
            "model": model,
            "description": description,
            "content": {
                MEDIA_TYPES[Format.CSV]: {"schema": {"type": "string"}},
                MEDIA_TYPES[Format.ARROW]: binary,
                MEDIA_TYPES[Format.PARQUET]: binary,
            },
        }
    }


def _format(fmt: Format | None, accept: str | None) -> Format:
    try:
        return negotiate(fmt, accept)
    except NotAcceptable as exc:
        raise Problem(406, "not_acceptable", str(exc)) from exc


_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (naive means UTC); a time beyond what UTC can represent (year 1 with a
    positive offset, say) is clamped to the representable range rather than refused."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC)
    except OverflowError:
        return _MIN if aware.year < 1970 else _MAX


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None, bool]:
    """(start, end) in UTC, and whether the range is empty (start >= end: nothing can match)."""
    s, e = _utc(start), _utc(end)
    return s, e, s is not None and e is not None and s >= e


def _rows(table: pa.Table, batch_rows: int) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=batch_rows))


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def series_route(router: APIRouter, series: Series, max_rows: int) -> None:
    """``GET /v1/<series.name>``: filters, a cursor, a limit, every format (see :mod:`k2.api.series`)."""

    async def route(
        request: Request,
        symbol: OptSymbol = None,
        exchange: OptExchange = None,
        instrument: OptInstrument = None,
        start: StartParam = None,
        end: EndParam = None,
        limit: Annotated[int, Query(ge=1, le=max_rows, description="Rows per page.")] = 1000,
        cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page.")] = None,
        fmt: FormatParam = None,
        accept: AcceptHeader = None,
    ) -> Response:
        chosen = _format(fmt, accept)
        s, e, empty = _range(start, end)
        flt = SeriesFilter(check_name(symbol, "symbol"), check_name(exchange, "exchange"), s, e, instrument)
        after = decode_cursor(series, cursor) if cursor else None
        batch_rows = BATCH_ROWS[chosen]
        headers: dict[str, str] = {}

        json_rows = chosen is Format.JSON

        def open_source(worker: Worker) -> Source:
            page = Page(None, None) if empty else open_page(worker, series, flt, after, limit, batch_rows, json_rows)
            next_cursor = None if page.next_key is None else encode_cursor(series, page.next_key)
            headers["next_cursor"] = next_cursor or ""
            query = {k: v for k, v in request.query_params.items()}
            return Source(
                page.reader,
                JSON_ROW_SCHEMA if json_rows else series.schema,
                cast=not json_rows,
                headers=cursor_headers(request.url.path, query, next_cursor),
            )

        def json_envelope() -> JsonEncoder:
            return JsonEncoder(
                head=lambda schema: {"next_cursor": headers.get("next_cursor") or None}, prerendered=True
            )

        return await service(request).stream(open_source, encoder(chosen, json_envelope))

    router.add_api_route(
        f"/{series.name}",
        route,
        methods=["GET"],
        response_model=None,
        responses=table_responses(series.page_model, series.description),
        summary=f"{series.name.capitalize()}, page by page",
        description=series.description
        + " The next page: `cursor=<next_cursor>` (also in the `K2-Next-Cursor` and `Link` headers).",
        dependencies=[Depends(require(Scope.READ))],
        operation_id=f"get_{series.name}",
    )


def build_router(max_rows: int) -> APIRouter:
    router = APIRouter(prefix="/v1")
    series_route(router, TRADES, max_rows)

    @router.get(
        "/ohlcv",
        response_model=None,
        responses=table_responses(BarList, "Bars in time order."),
        dependencies=[Depends(require(Scope.READ))],
        summary="OHLCV bars at any interval",
    )
    async def ohlcv(
        request: Request,
        symbol: OptSymbol = None,
        interval: Annotated[
            str, Query(pattern=INTERVAL_PATTERN, description="Bar width: 250ms, 1s, 1m, 5m, 1h, 1d...")
        ] = "1m",
        exchange: OptExchange = None,
        instrument: OptInstrument = None,
        start: StartParam = None,
        end: EndParam = None,
        fmt: FormatParam = None,
        accept: AcceptHeader = None,
    ) -> Response:
        """Open/high/low/close, exact volume and VWAP per epoch-aligned bucket (docs/query.md), of a symbol
        or, with ``instrument``, per venue side by side (an ``exchange`` column, one row per bar per venue)."""
        chosen = _format(fmt, accept)
        s, e, empty = _range(start, end)
        name, venue = check_name(symbol, "symbol"), check_name(exchange, "exchange")
        _symbol_or_instrument(name, instrument)
        parse_interval(interval)  # refused before borrowing a worker
        schema = OHLCV_SCHEMA if instrument is None else VENUE_OHLCV_SCHEMA

        def open_source(worker: Worker) -> Source:
            if empty:
                return Source(None, schema)
            bars = worker.engine.ohlcv(
                name, interval, start_time=s, end_time=e, exchange=venue, instrument=instrument
            ).table
            if bars.num_rows > max_rows:
                raise QueryError(
                    f"{bars.num_rows} bars exceed the limit of {max_rows}: narrow the range or widen the interval"
                )
            return Source(_rows(bars, BATCH_ROWS[chosen]), schema)

        return await service(request).stream(open_source, encoder(chosen))

    @router.get(
        "/vwap",
        response_model=Vwap,
        dependencies=[Depends(require(Scope.READ))],
        summary="Exact volume-weighted average price",
    )
    async def vwap(
        request: Request,
        symbol: OptSymbol = None,
        exchange: OptExchange = None,
        instrument: OptInstrument = None,
        start: StartParam = None,
        end: EndParam = None,
    ) -> Vwap:
        """Of a symbol, or of an instrument over every venue's trades of it (one venue with ``exchange``)."""
        s, e, empty = _range(start, end)
        name, venue = check_name(symbol, "symbol"), check_name(exchange, "exchange")
        _symbol_or_instrument(name, instrument)
        value = None
        if not empty:
            value = await service(request).run(
                lambda w: w.engine.vwap(name, start_time=s, end_time=e, exchange=venue, instrument=instrument)
            )
        canonical = None if instrument is None else instrument.upper()
        return Vwap(symbol=name, instrument=canonical, exchange=venue, start=s, end=e, vwap=_decimal_text(value))

    @router.get(
        "/instruments",
        response_model=InstrumentList,
        dependencies=[Depends(require(Scope.READ))],
        summary="Instruments in the table, with trade counts and time range",
    )
    async def list_instruments(request: Request) -> InstrumentList:
        svc = service(request)

        def read(worker: Worker) -> list[dict[str, Any]]:
            snapshot = worker.engine.plan().snapshot_id
            cached = svc.instruments.get(snapshot)
            if cached is None:
                cached = instruments(worker).to_pylist()
                svc.instruments.put(snapshot, cached)
            rows: list[dict[str, Any]] = cached
            return rows

        rows = await svc.run(read)
        return InstrumentList(data=[Instrument(**r) for r in rows])

    @router.post(
        "/sql",
        response_model=None,
        responses=table_responses(SqlResult, "The result, cut at the row cap (see `truncated`, K2-Row-Cap)."),
        dependencies=[Depends(require(Scope.SQL))],
        summary="Read-only SQL over the view `trades`",
    )
    async def run_sql(
        request: Request, body: SqlRequest, fmt: FormatParam = None, accept: AcceptHeader = None
    ) -> Response:
        """One read-only SELECT (DuckDB dialect), sandboxed like `k2 query sql`: no writes, no other files,
        no network; stopped at the query timeout and cut at the row cap."""
        chosen = _format(fmt, accept)
        svc = service(request)
        cap = svc.settings.api.max_rows

        def open_source(worker: Worker) -> Source:
            text = query_sql.check_read_only(worker.con, body.query)
            worker.ensure_views()
            relation = worker.con.sql(text, params=body.params)
            if relation is None:
                raise QueryError("the statement returned no rows")
            reader = relation.limit(cap + 1).to_arrow_reader(BATCH_ROWS[chosen])
            return Source(reader, reader.schema, row_cap=cap, headers={"K2-Row-Cap": str(cap)})

        def json_envelope() -> JsonEncoder:
            def head(schema: pa.Schema) -> Mapping[str, Any]:
                return {"columns": [{"name": f.name, "type": str(f.type)} for f in schema]}

            return JsonEncoder(head=head, key="rows", arrays=True)

        def trailer(rows: int, truncated: bool) -> Mapping[str, Any]:
            return {"row_count": rows, "truncated": truncated} if chosen is Format.JSON else {}

        return await svc.stream(open_source, encoder(chosen, json_envelope), trailer)

    @router.get(
        "/quality",
        response_model=None,
        responses=table_responses(QualityList, "One row per UTC day, exchange and symbol."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Completeness per symbol-day: expected vs stored, gaps by status",
    )
    async def quality_report(
        request: Request,
        symbol: OptSymbol = None,
        instrument: OptInstrument = None,
        day: DayParam = None,
        fmt: FormatParam = None,
        accept: AcceptHeader = None,
    ) -> Response:
        """What `k2 quality` prints: ids expected vs trades stored, gaps found/backfilled/unrecoverable/open,
        duplicates dropped, out-of-order arrivals, resets and anomalies (docs/quality.md); per venue."""
        name = check_name(symbol, "symbol")
        return await _table_route(request, fmt, accept, lambda w, s: quality(w, s, name, day, instrument))

    @router.get(
        "/gaps",
        response_model=None,
        responses=table_responses(GapList, "Gaps in their current state."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Sequence gaps per symbol-day, with status",
    )
    async def gap_list(
        request: Request,
        symbol: OptSymbol = None,
        instrument: OptInstrument = None,
        day: DayParam = None,
        status: Annotated[Literal["OPEN", "RESOLVED", "UNRECOVERABLE"] | None, Query()] = None,
        fmt: FormatParam = None,
        accept: AcceptHeader = None,
    ) -> Response:
        """Each gap (ids missing between two received ids) as of now: OPEN, RESOLVED by backfill, or
        UNRECOVERABLE (with why), by the UTC day of the trade that revealed it."""
        name = check_name(symbol, "symbol")
        return await _table_route(request, fmt, accept, lambda w, s: gaps(w, s, name, day, status, instrument))

    return router


def _symbol_or_instrument(symbol: str | None, instrument: str | None) -> None:
    if (symbol is None) == (instrument is None):
        raise QueryError("give a symbol or an instrument (BASE/QUOTE), not both")


async def _table_route(
    request: Request, fmt: Format | None, accept: str | None, build: Callable[[Worker, Any], pa.Table]
) -> Response:
    chosen = _format(fmt, accept)
    svc = service(request)

    def open_source(worker: Worker) -> Source:
        table = build(worker, svc.settings)
        return Source(_rows(table, BATCH_ROWS[chosen]), table.schema)

    return await svc.stream(open_source, encoder(chosen))


# Re-exported for the docs and tests: the models each table route's JSON rows follow.
ROW_MODELS: dict[str, type[BaseModel]] = {
    "trades": Trade,
    "ohlcv": Bar,
    "quality": QualityRow,
    "gaps": Gap,
}
