"""A thin Python client of the REST API: tables come back as Arrow (then pandas or polars), never as
hand-written HTTP.

```python
from k2.client import K2Client

with K2Client("http://127.0.0.1:8000", api_key="k2_...") as k2:
    bars = k2.ohlcv("BTCUSDT", "1m", start="2024-08-08T23:55:00Z").to_pandas()
    trades = k2.trades("BTCUSDT", start=..., end=..., limit=50_000)       # every page, one table
    quotes = k2.quotes("BTCUSDT", start=..., limit=100_000).to_polars()
    joined = k2.trades_with_quotes("ETHUSDT", tolerance="10s")         # each trade with its quote
    makers = k2.sql("SELECT side, count(*) AS n FROM trades GROUP BY side").to_polars()
```

Tables travel as Arrow IPC streams (exact ``decimal128(38, 12)``, ``timestamp[us, UTC]``) and are
returned as :class:`k2.query.QueryResult`, the same type the embedded engine returns, so code written
against ``QueryEngine`` reads the same against the service. Errors: :class:`~k2.errors.QueryError`
(400, 422), :class:`~k2.errors.ReadOnlyViolation` (403 ``read_only``), :class:`~k2.errors.ApiError` for the
rest (auth, rate limits with ``retry_after_s``, timeouts).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa

from k2.errors import ApiError, QueryError, ReadOnlyViolation
from k2.query.result import QueryResult

_ARROW = "application/vnd.apache.arrow.stream"
TimeArg = datetime | str | None


def _time(value: TimeArg) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class K2Client:
    """A connection to `k2 serve`. Thread-safe for reads (one httpx client)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> K2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tables ---------------------------------------------------------------------------------
    def trades(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        limit: int | None = None,
        page_size: int = 100_000,
        instrument: str | None = None,
    ) -> QueryResult:
        """Trades in time order; every page up to ``limit`` rows (all when None), as one table;
        ``instrument`` (BTC/USDT): every venue's trades of it."""
        pages = self.iter_trade_pages(
            symbol, exchange=exchange, start=start, end=end, page_size=page_size, limit=limit, instrument=instrument
        )
        return _concat(pages)

    def iter_trade_pages(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        page_size: int = 100_000,
        limit: int | None = None,
        instrument: str | None = None,
    ) -> Iterator[pa.Table]:
        """Pages of trades (Arrow tables) following the service's cursors, at most ``limit`` rows."""
        params = _params(symbol=symbol, exchange=exchange, start=_time(start), end=_time(end), instrument=instrument)
        return self._pages("/v1/trades", params, page_size, limit)

    def quotes(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        limit: int | None = None,
        page_size: int = 100_000,
        instrument: str | None = None,
    ) -> QueryResult:
        """Quotes (best bid/offer) in receive order, ``start``/``end`` on the receive time; every page up
        to ``limit`` rows (all when None), as one table."""
        pages = self.iter_quote_pages(
            symbol, exchange=exchange, start=start, end=end, page_size=page_size, limit=limit, instrument=instrument
        )
        return _concat(pages)

    def iter_quote_pages(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        page_size: int = 100_000,
        limit: int | None = None,
        instrument: str | None = None,
    ) -> Iterator[pa.Table]:
        """Pages of quotes (Arrow tables) following the service's cursors, at most ``limit`` rows."""
        params = _params(symbol=symbol, exchange=exchange, start=_time(start), end=_time(end), instrument=instrument)
        return self._pages("/v1/quotes", params, page_size, limit)

    def trades_with_quotes(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        tolerance: timedelta | str = timedelta(minutes=1),
        limit: int | None = None,
        page_size: int = 100_000,
        instrument: str | None = None,
    ) -> QueryResult:
        """Trades (as :meth:`trades` selects them), each with the quote prevailing when K2 received it
        (``bid_price``, ``bid_size``, ``ask_price``, ``ask_size``, ``quote_sequence``,
        ``quote_received_at``; null when none is at most ``tolerance`` older), as one table."""
        params = _params(
            symbol=symbol, exchange=exchange, start=_time(start), end=_time(end), tolerance=_duration(tolerance),
            instrument=instrument,
        )  # fmt: skip
        return _concat(self._pages("/v1/asof", params, page_size, limit))

    def spread(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        instrument: str | None = None,
    ) -> QueryResult:
        """Spread statistics per exchange and symbol over the quotes received in the range."""
        params = _params(symbol=symbol, exchange=exchange, start=_time(start), end=_time(end), instrument=instrument)
        return QueryResult(_arrow(self._get("/v1/spread", params)))

    def bbo(
        self,
        symbol: str | None = None,
        interval: str = "1s",
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        instrument: str | None = None,
    ) -> QueryResult:
        """Best bid and offer per bucket of receive time, with the spread's min, max and mean; of a symbol
        or an instrument (every venue's quotes of it)."""
        params = _params(
            symbol=symbol, interval=interval, exchange=exchange, start=_time(start), end=_time(end),
            instrument=instrument,
        )  # fmt: skip
        return QueryResult(_arrow(self._get("/v1/bbo", params)))

    def _pages(self, path: str, params: Mapping[str, Any], page_size: int, limit: int | None) -> Iterator[pa.Table]:
        """The pages of a paged route, following ``K2-Next-Cursor``, at most ``limit`` rows in all."""
        cursor: str | None = None
        left = limit
        while True:
            size = page_size if left is None else min(page_size, left)
            response = self._get(path, {**params, **_params(limit=size, cursor=cursor)})
            page = _arrow(response)
            yield page
            cursor = response.headers.get("K2-Next-Cursor")
            if left is not None:
                left -= page.num_rows
            if not cursor or (left is not None and left <= 0):
                return

    def ohlcv(
        self,
        symbol: str | None = None,
        interval: str = "1m",
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        instrument: str | None = None,
    ) -> QueryResult:
        """Bars of a symbol, or of an instrument per venue side by side (an ``exchange`` column)."""
        params = _params(
            symbol=symbol, interval=interval, exchange=exchange, start=_time(start), end=_time(end),
            instrument=instrument,
        )  # fmt: skip
        return QueryResult(_arrow(self._get("/v1/ohlcv", params)))

    def vwap(
        self,
        symbol: str | None = None,
        *,
        exchange: str | None = None,
        start: TimeArg = None,
        end: TimeArg = None,
        instrument: str | None = None,
    ) -> Decimal | None:
        params = _params(symbol=symbol, exchange=exchange, start=_time(start), end=_time(end), instrument=instrument)
        value = self._get("/v1/vwap", params, arrow=False).json()["vwap"]
        return None if value is None else Decimal(value)

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> QueryResult:
        """A read-only SELECT over the views ``trades``, ``quotes`` and ``quality_events`` (cut at the
        service's row cap: see ``K2-Row-Cap``)."""
        body: dict[str, Any] = {"query": query}
        if params is not None:
            body["params"] = list(params) if not isinstance(params, Mapping) else dict(params)
        response = self._request("POST", "/v1/sql", json=body, headers={"Accept": _ARROW})
        return QueryResult(_arrow(response))

    def quality(
        self, symbol: str | None = None, day: date | str | None = None, *, instrument: str | None = None
    ) -> QueryResult:
        params = _params(symbol=symbol, day=None if day is None else str(day), instrument=instrument)
        return QueryResult(_arrow(self._get("/v1/quality", params)))

    def gaps(
        self,
        symbol: str | None = None,
        day: date | str | None = None,
        status: str | None = None,
        *,
        instrument: str | None = None,
    ) -> QueryResult:
        params = _params(symbol=symbol, day=None if day is None else str(day), status=status, instrument=instrument)
        return QueryResult(_arrow(self._get("/v1/gaps", params)))

    # --- small JSON answers ---------------------------------------------------------------------
    def instruments(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._get("/v1/instruments", {}, arrow=False).json()["data"]
        return data

    def feeds(self) -> dict[str, Any]:
        found: dict[str, Any] = self._get("/v1/feeds", {}, arrow=False).json()
        return found

    def meta(self) -> dict[str, Any]:
        found: dict[str, Any] = self._get("/v1/meta", {}, arrow=False).json()
        return found

    # --- transport ------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, Any], *, arrow: bool = True) -> httpx.Response:
        headers = {"Accept": _ARROW} if arrow else {"Accept": "application/json"}
        return self._request("GET", path, params=params, headers=headers)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path} failed: {exc}", status=0, code="transport") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response


def _duration(value: timedelta | str) -> str:
    """A timedelta in the API's interval notation (whole milliseconds), or the text as given."""
    if isinstance(value, str):
        return value
    ms, rest = divmod(value // timedelta(microseconds=1), 1000)
    if rest or ms <= 0:
        raise QueryError(f"tolerance must be a positive whole number of milliseconds, not {value}")
    return f"{ms}ms"


def _concat(pages: Iterator[pa.Table]) -> QueryResult:
    batches: list[pa.RecordBatch] = []
    schema: pa.Schema | None = None
    for page in pages:
        schema = page.schema
        batches.extend(page.to_batches())
    if schema is None:
        raise ApiError("the service sent no page", status=0, code="empty")
    return QueryResult(pa.Table.from_batches(batches, schema))


def _arrow(response: httpx.Response) -> pa.Table:
    try:
        table: pa.Table = pa.ipc.open_stream(response.content).read_all()
    except pa.ArrowInvalid as exc:
        raise ApiError(f"the service sent an unreadable Arrow stream: {exc}", status=0, code="bad_body") from exc
    return table


def _error(response: httpx.Response) -> Exception:
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    if response.status_code in (400, 422):  # a query the service cannot run, or invalid parameters
        return QueryError(message)
    if response.status_code == 403 and code == "read_only":
        return ReadOnlyViolation(message)
    retry = response.headers.get("Retry-After")
    retry_s = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return ApiError(
        f"{response.status_code} {code}: {message}", status=response.status_code, code=code, retry_after_s=retry_s
    )
