"""The FastAPI application: routes, errors, security, metrics middleware, the dashboard.

``create_app(settings)`` builds everything from settings; the caller runs it (``k2 serve``, or a thread
of ``k2 run --serve``, see :mod:`k2.services.serve`). OpenAPI is generated from the typed routes and
models at ``/openapi.json`` (``/docs`` renders it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import k2
from k2.api import ops, problems, routes
from k2.api.keys import KeyStore, keys_path
from k2.api.models import Dataset, ErrorBody
from k2.api.ops import ProcessCounters
from k2.api.problems import Redactor
from k2.api.security import Guard
from k2.api.service import Service
from k2.api.workers import WorkerPool
from k2.config import K2Settings
from k2.logging import get_logger
from k2.metrics import API_REQUEST_SECONDS, API_REQUESTS

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
DATASETS = ("trades", "quotes", "asof")  # the paged row datasets (/v1/meta lists them)
CHART_LIBRARY = STATIC / "vendor" / "lightweight-charts.standalone.production.js"

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Invalid query (bad range, interval, cursor, SQL...).",
        401: "Missing or unknown API key.",
        403: "The key lacks the scope, or the SQL is not read-only.",
        406: "None of the Accept types can be produced.",
        422: "Invalid parameters.",
        429: "Rate limit exceeded (see Retry-After).",
        503: "Every worker busy, or the table unavailable (see Retry-After).",
        504: "The query ran past the time limit and was stopped.",
    }.items()
}


_DASHBOARD_HEADERS = {
    # Everything the dashboard loads comes from this service: no CDN, no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Dashboard(StaticFiles):
    """The dashboard's files, with a strict Content-Security-Policy."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_DASHBOARD_HEADERS)
        return response


class _RequestMetrics:
    """k2_api_requests_total and k2_api_request_duration_seconds, by route template (bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                API_REQUEST_SECONDS.labels(route=route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            code = status["code"]
            label = "429" if code == 429 else f"{code // 100}xx"
            API_REQUESTS.labels(route=route, status=label).inc()


def create_app(settings: K2Settings, *, process_metrics: bool = False, pool: WorkerPool | None = None) -> FastAPI:
    """The service for ``settings``; ``process_metrics`` when it runs inside the pipeline's process."""
    if not CHART_LIBRARY.exists():  # a pip install without `make`: the API works, the chart cannot draw
        log.warning("api.chart_library_missing", path=str(CHART_LIBRARY), hint="run `make web` (npm ci)")
    store = KeyStore(keys_path(settings))
    guard = Guard(settings.api, store)
    pool = pool or WorkerPool(settings)
    lake = settings.lake
    redact = Redactor([lake.warehouse, lake.resolved_catalog_uri.removeprefix("sqlite:///"), lake.warehouse_uri])
    svc = Service(settings, pool, guard, redact, process_metrics=process_metrics)
    if process_metrics:
        svc.extras["counters"] = ProcessCounters()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = asyncio.create_task(_sample(svc)) if process_metrics else None
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            await asyncio.to_thread(pool.close)

    app = FastAPI(
        title="K2 market data API",
        version=k2.__version__,
        description=(
            "Trades, quotes, OHLCV bars, exact VWAP, spreads, trades with their prevailing quote, read-only SQL "
            "and completeness over K2's Iceberg tables. "
            "Decimals are JSON strings; times RFC 3339 UTC. Formats: JSON, CSV, Arrow IPC stream, Parquet "
            "(`format=` or `Accept`). See docs/api.md."
        ),
        lifespan=lifespan,
        responses=_ERROR_RESPONSES,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.k2 = svc
    app.state.guard = guard
    problems.install(app, redact)
    app.include_router(routes.build_router(settings.api.max_rows))
    app.include_router(ops.build_router([Dataset(name=name, path=f"/v1/{name}") for name in DATASETS]))
    app.mount("/dashboard", _Dashboard(directory=STATIC, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.add_middleware(_RequestMetrics)
    return app


async def _sample(svc: Service) -> None:
    counters: ProcessCounters = svc.extras["counters"]
    while True:
        counters.sample()
        await asyncio.sleep(1.0)
