"""k2.client against the live service: the same tables the engine returns, errors as K2 errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from k2.client import K2Client
from k2.config import K2Settings
from k2.errors import ApiError, QueryError, ReadOnlyViolation
from k2.query import QueryEngine
from tests.integration.api.conftest import Lake, LiveApi, api_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(api_lake: Lake) -> Any:
    with QueryEngine.from_settings(api_lake.settings) as eng:
        yield eng


def test_client_returns_the_engines_tables(live_api: LiveApi, engine: QueryEngine) -> None:
    start = datetime(2024, 8, 8, 23, 58, tzinfo=UTC)
    with K2Client(live_api.url, api_key=live_api.keys.admin) as k2:
        trades = k2.trades("BTCUSDT", start=start, end="2024-08-09T00:00:00Z", page_size=700)
        bars = k2.ohlcv("ETHUSDT", "5m")
        vwap = k2.vwap("BTCUSDT", start=start)
        sql = k2.sql("SELECT count(*) AS n FROM trades WHERE symbol = $s", {"s": "ETHUSDT"})
        quality = k2.quality("BTCUSDT")
        gaps = k2.gaps(status="OPEN")
        limited = k2.trades("ETHUSDT", limit=1_234, page_size=500)
        instruments = k2.instruments()
    want = engine.query_trades("BTCUSDT", start_time=start, end_time=datetime(2024, 8, 9, tzinfo=UTC), limit=100_000)
    assert trades.num_rows == want.num_rows > 700  # several pages
    assert trades.table.column("trade_id").to_pylist() == want.table.column("trade_id").to_pylist()
    assert bars.table.equals(engine.ohlcv("ETHUSDT", "5m").table)
    assert vwap == engine.vwap("BTCUSDT", start_time=start)
    assert sql.to_pylist() == [{"n": 14_515}]
    assert quality.to_pandas()["symbol"].tolist() == ["BTCUSDT", "BTCUSDT"]
    assert gaps.to_polars()["event_id"].to_list() == ["gap-eth-1"]
    assert limited.num_rows == 1_234
    assert {i["symbol"] for i in instruments} == {"BTCUSDT", "ETHUSDT"}


def test_client_returns_quotes_spreads_and_the_as_of_join(live_api: LiveApi, engine: QueryEngine) -> None:
    start, end = datetime(2024, 8, 9, 0, 2, tzinfo=UTC), datetime(2024, 8, 9, 0, 3, tzinfo=UTC)
    with K2Client(live_api.url, api_key=live_api.keys.read) as k2:
        quotes = k2.quotes("ETHUSDT", start=start, end=end, page_size=2_000)
        first = k2.quotes(limit=2_500, page_size=1_000)
        spread = k2.spread(start=start, end=end)
        bbo = k2.bbo("BTCUSDT", "10s", start=start, end=end)
        joined = k2.trades_with_quotes("BTCUSDT", start=start, end=end, tolerance=timedelta(milliseconds=5))
        pages = list(k2.iter_quote_pages("BTCUSDT", start=start, end=end, page_size=3_000))
        with pytest.raises(QueryError, match="whole number of milliseconds"):
            k2.trades_with_quotes("BTCUSDT", tolerance=timedelta(microseconds=1500))
    want = engine.query_quotes("ETHUSDT", start_time=start, end_time=end, limit=100_000).table
    assert quotes.num_rows == want.num_rows > 2_000  # several pages
    assert quotes.table.column("source_sequence").to_pylist() == want.column("source_sequence").to_pylist()
    assert first.num_rows == 2_500
    assert spread.table.equals(engine.spread(start_time=start, end_time=end).table)
    assert (
        bbo.to_polars()["quotes"].sum()
        == engine.query_quotes("BTCUSDT", start_time=start, end_time=end, limit=100_000).num_rows
    )
    assert bbo.num_rows == 6
    as_of = engine.trades_with_quotes(
        "BTCUSDT", start_time=start, end_time=end, limit=100_000, tolerance=timedelta(milliseconds=5)
    )
    assert joined.table.column("quote_sequence").to_pylist() == as_of.table.column("quote_sequence").to_pylist()
    assert joined.to_pandas()["bid_price"].isna().sum() == as_of.table.column("bid_price").null_count > 0
    assert len(pages) > 1 and sum(p.num_rows for p in pages) == bbo.to_polars()["quotes"].sum()


def test_client_raises_k2_errors(live_api: LiveApi, api_lake: Lake, start_api: Callable[[K2Settings], str]) -> None:
    with K2Client(live_api.url, api_key=live_api.keys.read) as reader:
        with pytest.raises(QueryError, match="interval"):
            reader.ohlcv("BTCUSDT", "0m")
        with pytest.raises(ApiError) as denied:
            reader.sql("SELECT 1")
        assert denied.value.status == 403 and denied.value.code == "forbidden"
    with K2Client(live_api.url, api_key=live_api.keys.sql) as analyst, pytest.raises(ReadOnlyViolation):
        analyst.sql("DROP VIEW trades")
    with K2Client(live_api.url) as anonymous, pytest.raises(ApiError) as unauthorized:
        anonymous.meta()
    assert unauthorized.value.status == 401
    url = start_api(api_settings(api_lake, auth="open", rate_limit="1/minute"))
    with K2Client(url) as k2:
        k2.meta()
        with pytest.raises(ApiError) as limited:
            k2.meta()
    assert limited.value.status == 429 and limited.value.retryable and (limited.value.retry_after_s or 0) >= 1
