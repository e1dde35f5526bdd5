"""The data routes under /v1: trades (paged), OHLCV, VWAP, instruments, read-only SQL, completeness;
the quote routes are in :mod:`k2.api.routes_quotes`.

Each route takes its filters from :mod:`k2.api.params` (typed, so OpenAPI describes them), borrows a
worker and either returns a small JSON model or streams rows in the negotiated format
(:mod:`k2.api.tables`).
"""

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from k2.api import routes_quotes
from k2.api.formats import Format, JsonEncoder, encoder
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
from k2.api.params import (
    DayParam,
    FormatDep,
    IntervalParam,
    OptInstrument,
    OptSymbol,
    SymbolSelectionDep,
    check_instrument,
    check_name,
)
from k2.api.queries import gaps, instruments, quality
from k2.api.security import require
from k2.api.series import trades_series
from k2.api.service import service
from k2.api.streaming import Source
from k2.api.tables import BATCH_ROWS, batches, series_route, stream_table, table_responses
from k2.api.workers import Worker
from k2.errors import QueryError
from k2.query import sql as query_sql
from k2.query.bars import OHLCV_SCHEMA, VENUE_OHLCV_SCHEMA, parse_interval

TRADES = trades_series(Trade, TradePage)


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


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
        request: Request, sel: SymbolSelectionDep, chosen: FormatDep, interval: IntervalParam = "1m"
    ) -> Response:
        """Open/high/low/close, exact volume and VWAP per epoch-aligned bucket (docs/query.md), of a symbol
        or, with ``instrument``, per venue side by side (an ``exchange`` column, one row per bar per venue)."""
        parse_interval(interval)  # refused before borrowing a worker
        schema = OHLCV_SCHEMA if sel.instrument is None else VENUE_OHLCV_SCHEMA

        def open_source(worker: Worker) -> Source:
            if sel.empty:
                return Source(None, schema)
            bars = worker.engine.ohlcv(
                sel.symbol,
                interval,
                start_time=sel.start,
                end_time=sel.end,
                exchange=sel.exchange,
                instrument=sel.instrument,
            ).table
            if bars.num_rows > max_rows:
                raise QueryError(
                    f"{bars.num_rows} bars exceed the limit of {max_rows}: narrow the range or widen the interval"
                )
            return Source(batches(bars, BATCH_ROWS[chosen]), schema)

        return await service(request).stream(open_source, encoder(chosen))

    @router.get(
        "/vwap",
        response_model=Vwap,
        dependencies=[Depends(require(Scope.READ))],
        summary="Exact volume-weighted average price",
    )
    async def vwap(request: Request, sel: SymbolSelectionDep) -> Vwap:
        """Of a symbol, or of an instrument over every venue's trades of it (one venue with ``exchange``)."""
        value = None
        if not sel.empty:
            value = await service(request).run(
                lambda w: w.engine.vwap(
                    sel.symbol, start_time=sel.start, end_time=sel.end, exchange=sel.exchange, instrument=sel.instrument
                )
            )
        return Vwap(
            symbol=sel.symbol,
            instrument=sel.instrument,
            exchange=sel.exchange,
            start=sel.start,
            end=sel.end,
            vwap=_decimal_text(value),
        )

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
        summary="Read-only SQL over the views `trades`, `quotes` and `quality_events`",
    )
    async def run_sql(request: Request, body: SqlRequest, chosen: FormatDep) -> Response:
        """One read-only SELECT (DuckDB dialect), sandboxed like `k2 query sql`: no writes, no other files,
        no network; stopped at the query timeout and cut at the row cap."""
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
        chosen: FormatDep,
        symbol: OptSymbol = None,
        instrument: OptInstrument = None,
        day: DayParam = None,
    ) -> Response:
        """What `k2 quality` prints: ids expected vs trades stored, gaps found/backfilled/unrecoverable/open,
        duplicates dropped, out-of-order arrivals, resets and anomalies (docs/quality.md); per venue."""
        settings, name = service(request).settings, check_name(symbol, "symbol")
        canonical = check_instrument(instrument)
        return await stream_table(request, chosen, lambda w: quality(w, settings, name, day, canonical))

    @router.get(
        "/gaps",
        response_model=None,
        responses=table_responses(GapList, "Gaps in their current state."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Sequence gaps per symbol-day, with status",
    )
    async def gap_list(
        request: Request,
        chosen: FormatDep,
        symbol: OptSymbol = None,
        instrument: OptInstrument = None,
        day: DayParam = None,
        status: Annotated[Literal["OPEN", "RESOLVED", "UNRECOVERABLE"] | None, Query()] = None,
    ) -> Response:
        """Each gap (ids missing between two received ids) as of now: OPEN, RESOLVED by backfill, or
        UNRECOVERABLE (with why), by the UTC day of the trade that revealed it; ``instrument``: of every
        venue's symbol of it."""
        settings, name = service(request).settings, check_name(symbol, "symbol")
        canonical = check_instrument(instrument)
        return await stream_table(request, chosen, lambda w: gaps(w, settings, name, day, status, canonical))

    routes_quotes.add_routes(router, max_rows)
    return router


# Re-exported for the docs and tests: the models each table route's JSON rows follow.
ROW_MODELS: dict[str, type[BaseModel]] = {
    "trades": Trade,
    "ohlcv": Bar,
    "quality": QualityRow,
    "gaps": Gap,
    **routes_quotes.ROW_MODELS,
}
