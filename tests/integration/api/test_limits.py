"""Runaway queries: stopped in DuckDB at the timeout while the service keeps answering; row caps."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pyarrow as pa
import pytest

from k2.config import K2Settings
from tests.conftest import eventually
from tests.integration.api.conftest import Lake, api_settings

pytestmark = pytest.mark.integration

RUNAWAYS = {
    "range": "SELECT sum(i) FROM range(1000000000000) t(i)",
    "cross_join": "SELECT count(*) FROM trades a, trades b, trades c WHERE a.price + b.price > c.price",
}


def _in_flight(http: httpx.Client) -> float:
    started = _metric(http, 'k2_api_queries_total{phase="started"}')
    return started - _metric(http, 'k2_api_queries_total{phase="finished"}')


def _metric(http: httpx.Client, name: str) -> float:
    text = http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? ([0-9.e+-]+)$", line)
        if match:
            total += float(match[2])
    return total


@pytest.fixture(scope="module")
def limited(api_lake: Lake, start_api: Callable[[K2Settings], str]) -> str:
    """Open mode on loopback, 2 workers, a 6 s query timeout, a 1,000-row cap."""
    return start_api(api_settings(api_lake, auth="open", workers=2, query_timeout_s=6.0, max_rows=1_000))


@pytest.mark.parametrize("name", sorted(RUNAWAYS))
def test_runaway_query_is_stopped_at_the_timeout_and_others_are_served_meanwhile(limited: str, name: str) -> None:
    with httpx.Client(base_url=limited, timeout=120) as http, ThreadPoolExecutor(1) as pool:
        stopped_before = _metric(http, 'k2_api_queries_stopped_total{reason="timeout"}')
        runaway: Future[httpx.Response] = pool.submit(http.post, "/v1/sql", json={"query": RUNAWAYS[name]})
        eventually(lambda: _in_flight(http) >= 1, timeout=30)
        served = [
            http.get("/v1/trades", params={"symbol": "BTCUSDT", "limit": 10}),
            http.get("/v1/ohlcv", params={"symbol": "ETHUSDT", "interval": "1m"}),
            http.get("/healthz"),
        ]
        assert [r.status_code for r in served] == [200, 200, 200]
        assert not runaway.done(), "the runaway query was still running while the others were answered"
        answer = runaway.result(timeout=60)  # generous: the timeout is 6 s
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "query_timeout"
        assert _metric(http, 'k2_api_queries_stopped_total{reason="timeout"}') == stopped_before + 1
        eventually(lambda: _in_flight(http) == 0, timeout=10)
        assert http.get("/v1/vwap", params={"symbol": "BTCUSDT"}).status_code == 200  # the worker is usable


def test_row_cap_cuts_results_and_says_so(limited: str) -> None:
    query = {"query": "SELECT i FROM range(1000000000000) t(i)"}
    with httpx.Client(base_url=limited, timeout=60) as http:
        body = http.post("/v1/sql", json=query).json()
        arrow = http.post("/v1/sql", json=query, params={"format": "arrow"})
        small = http.post("/v1/sql", json={"query": "SELECT i FROM range(1000) t(i)"}).json()
        too_many = http.get("/v1/trades", params={"limit": 1_001})
    assert body["row_count"] == 1_000 and body["truncated"] is True and len(body["rows"]) == 1_000
    assert arrow.headers["K2-Row-Cap"] == "1000"
    assert pa.ipc.open_stream(arrow.content).read_all().num_rows == 1_000
    assert small["row_count"] == 1_000 and small["truncated"] is False
    assert too_many.status_code == 422
