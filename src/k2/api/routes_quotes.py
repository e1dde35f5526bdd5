"""The quote routes under /v1: quotes (paged), spread statistics, best bid/offer per bucket, and the
as-of join (trades, paged, each with its prevailing quote).

Quotes are placed in time by when K2 received them (Binance quotes carry no exchange time), so
``start``/``end`` select on ``ingestion_timestamp`` here, and on the trade's ``timestamp`` for the
as-of join, whose pages are trade pages (see docs/query.md, *As-of join*).
"""

from datetime import timedelta
from typing import Annotated

import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from k2.api.keys import Scope
from k2.api.models import Bbo, BboList, Quote, QuotePage, Spread, SpreadList, TradeWithQuote, TradeWithQuotePage
from k2.api.params import CursorParam, FormatDep, IntervalParam, SelectionDep, SymbolSelectionDep, ToleranceParam
from k2.api.queries import bbo
from k2.api.security import require
from k2.api.series import quotes_series, trades_series
from k2.api.tables import series_route, stream_page, stream_table, table_responses
from k2.api.workers import Worker
from k2.errors import QueryError
from k2.query.bars import parse_interval
from k2.query.quotes import BBO_SCHEMA, SPREAD_SCHEMA

QUOTES = quotes_series(Quote, QuotePage)
ASOF = trades_series(TradeWithQuote, TradeWithQuotePage, name="asof")

# An as-of page is read into memory for the join (the other pages stream from DuckDB): at most this many trades.
ASOF_MAX_PAGE = 100_000

# The trade key (k2.api.series.TRADE_KEY) as an Arrow sort (nulls last): joined pages keep the page order.
_TRADE_ORDER = [(c, "ascending") for c in ("timestamp", "exchange", "symbol", "source_sequence", "trade_id")]


def add_routes(router: APIRouter, max_rows: int) -> None:
    series_route(router, QUOTES, max_rows)

    @router.get(
        "/spread",
        response_model=None,
        responses=table_responses(SpreadList, "One row per exchange and symbol."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Spread statistics per exchange and symbol",
    )
    async def spread(request: Request, sel: SelectionDep, chosen: FormatDep) -> Response:
        """Over the quotes received in the range: how many, first/last received, min and max spread
        (ask - bid, exact), exact mean spread and mid (half-even to 12 places), mean spread in bps."""

        def build(worker: Worker) -> pa.Table:
            if sel.empty:
                return SPREAD_SCHEMA.empty_table()
            found: pa.Table = worker.engine.spread(
                sel.symbol, sel.exchange, sel.start, sel.end, instrument=sel.instrument
            ).table
            return found

        return await stream_table(request, chosen, build)

    @router.get(
        "/bbo",
        response_model=None,
        responses=table_responses(BboList, "Buckets in time order."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Best bid and offer per time bucket, with the spread's min, max and mean",
    )
    async def best_bid_offer(
        request: Request, sel: SymbolSelectionDep, chosen: FormatDep, interval: IntervalParam = "1s"
    ) -> Response:
        """Per epoch-aligned bucket of receive time: the quotes received, the best bid and offer in force
        at its end (the last quote received in it) and the spread's exact min, max and mean. One point
        per bucket however many quotes the venue sent: what a spread chart draws."""
        width_us = parse_interval(interval) // timedelta(microseconds=1)

        def build(worker: Worker) -> pa.Table:
            if sel.empty:
                return BBO_SCHEMA.empty_table()
            table = bbo(worker, sel, width_us)
            if table.num_rows > max_rows:
                raise QueryError(
                    f"{table.num_rows} buckets exceed the limit of {max_rows}: narrow the range or widen the interval"
                )
            return table

        return await stream_table(request, chosen, build)

    @router.get(
        "/asof",
        response_model=None,
        responses=table_responses(TradeWithQuotePage, "Trades in key order, each with its prevailing quote."),
        dependencies=[Depends(require(Scope.READ))],
        summary="Trades with their prevailing quote (as-of join), page by page",
        operation_id="get_asof",
    )
    async def asof(
        request: Request,
        sel: SelectionDep,
        chosen: FormatDep,
        tolerance: ToleranceParam = "1m",
        limit: Annotated[
            int, Query(ge=1, le=min(max_rows, ASOF_MAX_PAGE), description="Trades per page (read whole for the join).")
        ] = 1000,
        cursor: CursorParam = None,
    ) -> Response:
        """The trades `GET /v1/trades` pages through (same selection and order; its own cursors), each with the
        last quote of its exchange and symbol that K2 received before it, if at most `tolerance` older
        (else null quote columns; backfilled trades never get one). The next page: `cursor=<next_cursor>`
        (also in the `K2-Next-Cursor` and `Link` headers)."""
        width = parse_interval(tolerance)

        def join(worker: Worker, trades: pa.Table) -> pa.Table:
            joined: pa.Table = worker.engine.join_quotes(trades, width, sel.instrument).table
            return joined.sort_by(_TRADE_ORDER)

        return await stream_page(request, ASOF, sel, chosen, cursor, limit, join)


# The models each route's JSON rows follow (k2.api.routes.ROW_MODELS).
ROW_MODELS: dict[str, type[BaseModel]] = {"quotes": Quote, "spread": Spread, "bbo": Bbo, "asof": TradeWithQuote}
