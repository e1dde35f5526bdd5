"""Answering rows: the OpenAPI of a table response, batch sizes per format, small tables and pages
streamed in the negotiated format (:mod:`k2.api.formats`, :mod:`k2.api.streaming`).

:func:`series_route` turns a :class:`~k2.api.series.Series` into ``GET /v1/<name>`` with the shared
selection, a limit, a cursor and every format; :func:`stream_page` is its body, also used by routes
that post-process a page (the as-of join).
"""

from collections.abc import Callable
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from k2.api.formats import MEDIA_TYPES, Format, JsonEncoder, encoder
from k2.api.keys import Scope
from k2.api.params import CursorParam, Selection, negotiated, selection
from k2.api.security import require
from k2.api.series import JSON_ROW_SCHEMA, Series, cursor_headers, decode_cursor, encode_cursor, open_page
from k2.api.service import service
from k2.api.streaming import Source
from k2.api.workers import Worker

BATCH_ROWS = {Format.JSON: 8_192, Format.CSV: 16_384, Format.ARROW: 65_536, Format.PARQUET: 131_072}


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


def batches(table: pa.Table, batch_rows: int) -> pa.RecordBatchReader:
    """A materialised (small) table as a reader of ``batch_rows``-row batches."""
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=batch_rows))


async def stream_table(request: Request, chosen: Format, build: Callable[[Worker], pa.Table]) -> Response:
    """The table ``build(worker)`` returns (bars, spreads, a report: small), streamed in ``chosen``."""

    def open_source(worker: Worker) -> Source:
        table = build(worker)
        return Source(batches(table, BATCH_ROWS[chosen]), table.schema)

    return await service(request).stream(open_source, encoder(chosen))


PageFinish = Callable[[Worker, pa.Table], pa.Table]


async def stream_page(
    request: Request,
    series: Series,
    sel: Selection,
    chosen: Format,
    cursor: str | None,
    limit: int,
    finish: PageFinish | None = None,
) -> Response:
    """One page of ``series`` in ``chosen``, with ``next_cursor`` (JSON), ``K2-Next-Cursor`` and ``Link``.

    Without ``finish`` the page's rows stream straight from DuckDB (JSON rows rendered by DuckDB). With
    it, the page (at most ``limit`` rows) is read, ``finish(worker, page)`` makes the rows sent (the
    as-of join adds each trade's quote), and those are streamed.
    """
    after = decode_cursor(series, cursor) if cursor else None
    batch_rows = BATCH_ROWS[chosen]
    json_rows = chosen is Format.JSON and finish is None
    found: dict[str, str | None] = {}

    def open_source(worker: Worker) -> Source:
        page = open_page(worker, series, sel, after, limit, batch_rows, json_rows)
        next_cursor = None if page.next_key is None else encode_cursor(series, page.next_key)
        found["next_cursor"] = next_cursor
        links = cursor_headers(request.url.path, dict(request.query_params.items()), next_cursor)
        if finish is None:
            schema = JSON_ROW_SCHEMA if json_rows else series.schema
            return Source(page.reader, schema, cast=not json_rows, headers=links)
        rows = series.schema.empty_table() if page.reader is None else page.reader.read_all().cast(series.schema)
        table = finish(worker, rows)
        return Source(batches(table, batch_rows), table.schema, headers=links)

    def json_envelope() -> JsonEncoder:
        return JsonEncoder(head=lambda schema: {"next_cursor": found.get("next_cursor")}, prerendered=json_rows)

    return await service(request).stream(open_source, encoder(chosen, json_envelope))


def series_route(router: APIRouter, series: Series, max_rows: int) -> None:
    """``GET /v1/<series.name>``: the selection, a cursor, a limit, every format (see :mod:`k2.api.series`)."""

    async def route(
        request: Request,
        sel: Annotated[Selection, Depends(selection)],
        chosen: Annotated[Format, Depends(negotiated)],
        limit: Annotated[int, Query(ge=1, le=max_rows, description="Rows per page.")] = 1000,
        cursor: CursorParam = None,
    ) -> Response:
        return await stream_page(request, series, sel, chosen, cursor, limit)

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
